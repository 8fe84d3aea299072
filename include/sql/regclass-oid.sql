-- The OID of a relation given by (possibly qualified) name; raises when there is none.
SELECT %(relation)s::regclass::oid;
