-- The columns of one table (schema, table: unquoted names), in order, with their types.
SELECT a.attname::text AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.quote_ident(%(schema)s) || '.' || pg_catalog.quote_ident(%(table)s))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;
