-- The first live column of a table given by (possibly qualified) name; no row when it has none.
SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %(relation)s::regclass AND a.attnum > 0
 AND NOT a.attisdropped ORDER BY a.attnum LIMIT 1;
