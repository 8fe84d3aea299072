-- Objects outside an extension that depend (pg_depend, bound at creation) on some of its functions: views and
-- materialized views (through their rewrite rule), SQL-standard function bodies, defaults, constraints,
-- triggers, policies ... An update script that drops or re-creates such a function fails on them (or, with
-- CASCADE, silently drops them). Function bodies in other languages are late-bound: see
-- extension.catalog.compat_scan.
SELECT p.proname::text AS function,
       p.oid::regprocedure::text AS signature,
       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN
                (SELECT CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END
                   FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
                  WHERE r.oid = d.objid)
            WHEN d.classid = 'pg_catalog.pg_proc'::regclass THEN
                (SELECT CASE q.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END
                   FROM pg_catalog.pg_proc q WHERE q.oid = d.objid)
            ELSE 'object' END AS object_type,
       CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN
                (SELECT r.ev_class::regclass::text FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
            WHEN d.classid = 'pg_catalog.pg_proc'::regclass THEN d.objid::regprocedure::text
            ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) END AS object
FROM pg_catalog.pg_extension e
JOIN pg_catalog.pg_depend m ON m.refclassid = 'pg_catalog.pg_extension'::regclass AND m.refobjid = e.oid
                           AND m.classid = 'pg_catalog.pg_proc'::regclass AND m.deptype = 'e'
JOIN pg_catalog.pg_proc p ON p.oid = m.objid
JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = p.oid
                           AND d.deptype = 'n'
WHERE e.extname = %(extname)s
  AND p.proname = ANY (%(functions)s::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x
                   WHERE x.classid = d.classid AND x.objid = d.objid AND x.deptype = 'e'
                     AND x.refclassid = 'pg_catalog.pg_extension'::regclass)
  AND NOT (d.classid = 'pg_catalog.pg_rewrite'::regclass AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend x
               ON x.classid = 'pg_catalog.pg_class'::regclass AND x.objid = r.ev_class AND x.deptype = 'e'
            WHERE r.oid = d.objid))
ORDER BY 4, 1;
