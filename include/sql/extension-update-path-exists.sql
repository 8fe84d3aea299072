-- Whether ALTER EXTENSION ... UPDATE can go from one version to another with the installed update scripts.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths(%(extname)s)
               WHERE source = %(source)s AND target = %(target)s AND path IS NOT NULL) AS present;
