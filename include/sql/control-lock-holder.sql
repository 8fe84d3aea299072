SELECT key, version, dag_id, run_id, worker,
       to_char(taken_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"') AS at,
       to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"') AS since,
       heir_dag_id, heir_run_id, needs_attention,
       extract(epoch FROM clock_timestamp() - taken_at)::float8 AS age_s
FROM pgupgrade.locks WHERE key = %(key)s
