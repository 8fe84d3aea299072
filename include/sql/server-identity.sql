-- Who answers on this connection: enough to prove it is the cluster in pg_datadir on the runner's host.
SELECT (SELECT system_identifier FROM pg_control_system())::text AS system_identifier,
       pg_is_in_recovery() AS in_recovery,
       current_setting('data_directory') AS data_directory,
       current_setting('port')::int AS port,
       extract(epoch FROM pg_postmaster_start_time())::bigint AS started_epoch
