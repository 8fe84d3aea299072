-- A physical replication slot reserving WAL from now on (its standby may connect much later), unless it exists.
SELECT pg_create_physical_replication_slot(%(name)s, true)
 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(name)s)
