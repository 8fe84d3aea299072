-- The tables extensions own (pg_depend deptype 'e'), as (schema, name): those of one extension (extname) or of
-- all (NULL), optionally only the one of a name (relname; NULL: every table).
SELECT n.nspname::text AS schema, c.relname::text AS name
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_extension'::regclass
JOIN pg_catalog.pg_class c ON c.oid = d.objid AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e'
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND (%(extname)s::text IS NULL OR e.extname = %(extname)s)
  AND (%(relname)s::text IS NULL OR c.relname = %(relname)s)
ORDER BY 1, 2;
