SELECT pid, pg_terminate_backend(pid) AS terminated
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();
