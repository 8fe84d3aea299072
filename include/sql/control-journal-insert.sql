INSERT INTO pgupgrade.journal (event_id, dag_id, run_id, event, at, details, spooled)
VALUES (%(event_id)s, %(dag_id)s, %(run_id)s, %(event)s, coalesce(%(at)s::timestamptz, clock_timestamp()),
        %(details)s::jsonb, %(spooled)s)
ON CONFLICT (event_id) DO NOTHING
