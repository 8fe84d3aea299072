-- Functions and procedures outside any extension (and outside the system schemas) whose body text mentions one
-- of the given names; the caller checks word boundaries. Late-bound bodies (plpgsql, sql without BEGIN ATOMIC)
-- have no pg_depend entries, so this is the only way to find them before they fail at run time.
SELECT p.oid::regprocedure::text AS object,
       CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS object_type,
       p.prosrc AS body
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%%'
  AND l.lanname NOT IN ('c', 'internal')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x
                   WHERE x.classid = 'pg_catalog.pg_proc'::regclass AND x.objid = p.oid AND x.deptype = 'e')
  AND EXISTS (SELECT 1 FROM unnest(%(names)s::text[]) AS w(name) WHERE strpos(p.prosrc, w.name) > 0)
ORDER BY 1;
