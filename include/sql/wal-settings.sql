-- What a physical backup with a replication slot needs: wal_level replica or logical, a WAL sender, a slot.
SELECT current_setting('wal_level') AS wal_level,
       current_setting('max_wal_senders')::int AS max_wal_senders,
       current_setting('max_replication_slots')::int AS max_replication_slots,
       (SELECT count(*) FROM pg_replication_slots)::int AS slots_used;
