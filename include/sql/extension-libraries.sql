-- The shared libraries (pg_proc.probin, e.g. $libdir/name) the functions of installed extensions load.
SELECT DISTINCT e.extname, p.probin FROM pg_extension e
 JOIN pg_depend d ON d.refobjid = e.oid AND d.refclassid = 'pg_extension'::regclass
 AND d.classid = 'pg_proc'::regclass JOIN pg_proc p ON p.oid = d.objid WHERE p.probin IS NOT NULL;
