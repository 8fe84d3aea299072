-- The database's large objects: how many, and (content) an md5 over every one's bytes in oid order.
SELECT count(*) AS count,
       CASE WHEN %(content)s THEN md5(coalesce(string_agg(md5(lo_get(oid)), ',' ORDER BY oid), '')) END AS md5
FROM pg_largeobject_metadata;
