-- Takes a free lock: exactly one of several contenders gets a row back.
INSERT INTO pgupgrade.locks (key, dag_id, run_id, worker) VALUES (%(key)s, %(dag_id)s, %(run_id)s, %(worker)s)
ON CONFLICT (key) DO NOTHING
RETURNING version
