-- Views outside an extension that use columns of the extension's tables (pg_depend of their rewrite rules):
-- an update script that drops such a column fails on them. Shown as it is in the documentation.
SELECT DISTINCT v.oid::regclass::text AS view_name, t.relname::text AS table_name,
       a.attname::text AS column_name
FROM pg_depend d
JOIN pg_rewrite r ON r.oid = d.objid
JOIN pg_class v ON v.oid = r.ev_class
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjsubid > 0 AND v.oid <> t.oid
  AND EXISTS (SELECT 1 FROM pg_depend x JOIN pg_extension e ON e.oid = x.refobjid
              WHERE x.classid = 'pg_class'::regclass AND x.objid = t.oid AND x.deptype = 'e'
                AND e.extname = %(extname)s)
ORDER BY 1, 2, 3;
