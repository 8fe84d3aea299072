-- The primary's synchronous_standby_names ('' when replication is asynchronous).
SELECT current_setting('synchronous_standby_names') AS names
