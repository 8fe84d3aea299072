-- On a primary: the replay lag in bytes of the standby streaming under %(name)s, once it streams and has
-- replayed past %(since)s; no row before that.
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes
  FROM pg_stat_replication
 WHERE application_name = %(name)s
   AND state = 'streaming'
   AND replay_lsn >= %(since)s::pg_lsn
 LIMIT 1
