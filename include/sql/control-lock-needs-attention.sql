INSERT INTO pgupgrade.locks (key, dag_id, run_id, worker, needs_attention)
VALUES (%(key)s, %(dag_id)s, %(run_id)s, %(worker)s, %(reason)s)
ON CONFLICT (key) DO UPDATE SET version = pgupgrade.locks.version + 1, needs_attention = excluded.needs_attention
