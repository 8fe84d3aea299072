-- On a standby: its WAL receiver (no row when none runs), the name it streams under (the connection string's
-- application_name, else cluster_name, else libpq's default "walreceiver") and its release.
SELECT r.status,
       r.conninfo,
       current_setting('cluster_name') AS cluster_name,
       current_setting('server_version_num')::int AS server_version_num
  FROM (SELECT 1) AS one
  LEFT JOIN pg_stat_wal_receiver AS r ON true
