-- WAL written since an LSN (the new cluster's position when it opened to clients): what a rollback to the old
-- cluster or to the backup would discard.
SELECT pg_current_wal_lsn()::text AS lsn, pg_wal_lsn_diff(pg_current_wal_lsn(), %(since)s::pg_lsn)::bigint AS bytes;
