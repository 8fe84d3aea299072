-- The indexes of this database whose key columns sort by a collation other than C/POSIX, with that collation:
-- provider d is the database's default collation (then the version is the database's), c libc, i icu, b builtin.
SELECT DISTINCT format('%I.%I', n.nspname, ic.relname) AS index,
       format('%I.%I', cn.nspname, co.collname) AS collation,
       co.oid::bigint AS collation_oid, co.collprovider::text AS provider, co.collcollate AS collate,
       coalesce(to_jsonb(co) ->> 'colllocale', to_jsonb(co) ->> 'colliculocale') AS locale,
       co.collversion AS recorded_version,
       CASE WHEN co.collprovider <> 'd' THEN pg_collation_actual_version(co.oid) END AS actual_version
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS k(coll)
JOIN pg_collation co ON co.oid = k.coll
JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE co.collname NOT IN ('C', 'POSIX', 'ucs_basic')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
ORDER BY 2, 1;
