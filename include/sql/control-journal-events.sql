SELECT event, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"') AS at, details, spooled
FROM pgupgrade.journal WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s ORDER BY id
