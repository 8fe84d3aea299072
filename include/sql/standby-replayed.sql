-- On a standby: its replay position, and whether it has replayed the WAL record that starts at %(lsn)s (its
-- primary's shutdown checkpoint): the position is then past that start (equal: only the record before).
SELECT pg_last_wal_replay_lsn()::text AS replay_lsn,
       coalesce(pg_last_wal_replay_lsn() > %(lsn)s::pg_lsn, false) AS replayed
