-- Triggers by name prefix with their enabled state, from pg_trigger (information_schema has no enabled flag
-- and hides tables the session does not own). tgenabled: O = enabled, D = disabled, R = replica, A = always.
SELECT n.nspname AS schema, c.relname AS table_name, t.tgname AS trigger_name, t.tgenabled::text AS enabled
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND starts_with(t.tgname, %(prefix)s)
ORDER BY 1, 2, 3;
