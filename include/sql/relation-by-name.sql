-- A relation by name, resolved through the search path as the extension resolves it, as (schema, name); no row
-- when there is none. quote: the name is an unqualified one that is quoted first (entity names), else a
-- (qualified, quoted) name as stored (backing tables).
SELECT n.nspname::text AS schema, c.relname::text AS name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(CASE WHEN %(quote)s THEN pg_catalog.quote_ident(%(name)s) ELSE %(name)s END);
