SELECT slot_name, slot_type, database, active FROM pg_replication_slots ORDER BY 1;
