-- Tables and materialized views of one database, with their on-disk size.
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, pg_total_relation_size(c.oid) AS size_bytes,
       c.relpersistence = 'u' AS unlogged
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
ORDER BY 1, 2;
