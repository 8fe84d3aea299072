-- Generic health checks of one database: one row per check (check, ok, detail).
-- Extension-specific checks (version, metadata errors, queue) come from the extension profile.
SELECT 'server accepts queries' AS check, true AS ok, version() AS detail
UNION ALL
SELECT 'no invalid indexes', count(*) = 0, coalesce(string_agg(indexrelid::regclass::text, ', '), '')
FROM pg_index WHERE NOT indisvalid
UNION ALL
SELECT 'no disabled triggers with prefix ' || %(prefix)s, count(*) = 0,
       coalesce(string_agg(tgrelid::regclass::text || '.' || tgname, ', '), '')
FROM pg_trigger WHERE NOT tgisinternal AND starts_with(tgname, %(prefix)s) AND tgenabled = 'D'
UNION ALL
SELECT 'not in recovery', NOT pg_is_in_recovery(), '';
