-- Drops a physical replication slot by name if it exists (the slot a link-mode backup created to keep WAL).
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %(slot)s;
