INSERT INTO pgupgrade.documents (dag_id, run_id, name, body) VALUES (%(dag_id)s, %(run_id)s, %(name)s, %(body)s::jsonb)
ON CONFLICT (dag_id, run_id, name) DO UPDATE SET body = excluded.body, updated_at = clock_timestamp()
