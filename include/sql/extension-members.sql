-- Every object an extension owns (pg_depend deptype 'e'), described; is_function marks those that
-- extension-functions lists with their interface.
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       d.classid = 'pg_catalog.pg_proc'::regclass AS is_function
FROM pg_catalog.pg_extension e
JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
                           AND d.deptype = 'e'
WHERE e.extname = %(extname)s
ORDER BY 1;
