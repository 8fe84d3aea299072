-- Client sessions other than ours; background workers and replication are not clients.
SELECT pid, usename, datname, application_name, client_addr::text, state, backend_start
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
ORDER BY backend_start;
