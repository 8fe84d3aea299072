-- The functions and procedures an extension owns (pg_depend deptype 'e'), with their interface and body; the
-- documentation's API tables and the comparison of two versions are read from these rows.
SELECT p.proname::text AS name, pg_catalog.oidvectortypes(p.proargtypes) AS types,
       pg_catalog.pg_get_function_arguments(p.oid) AS arguments, pg_catalog.pg_get_function_result(p.oid) AS result,
       p.prokind::text AS kind, l.lanname::text AS language, p.provolatile::text AS volatility,
       p.prosecdef AS security_definer, p.pronargs AS nargs, p.pronargdefaults AS ndefaults,
       coalesce(p.proargnames, '{}')::text[] AS argnames, coalesce(p.proargmodes, '{}')::text[] AS argmodes,
       pg_catalog.obj_description(p.oid, 'pg_proc') AS comment, pg_catalog.md5(p.prosrc) AS body_md5, p.prosrc AS body
FROM pg_catalog.pg_extension e
JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
                           AND d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
JOIN pg_catalog.pg_proc p ON p.oid = d.objid
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE e.extname = %(extname)s
ORDER BY 1, 2;
