-- Whether an extension owns (pg_depend deptype 'e') a function or procedure of this name, in any signature.
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
     AND d.refclassid = 'pg_catalog.pg_extension'::regclass
    JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = %(extname)s AND p.proname = %(function)s) AS present;
