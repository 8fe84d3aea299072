SELECT slot, key, dag_id, run_id, to_char(taken_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at
FROM pgupgrade.outage_slots ORDER BY slot
