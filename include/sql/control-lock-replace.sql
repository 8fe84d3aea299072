-- Compare-and-set: the holder seen at version %(version)s becomes this run; no row back = someone else moved first.
UPDATE pgupgrade.locks
SET version = version + 1, dag_id = %(dag_id)s, run_id = %(run_id)s, worker = %(worker)s,
    since = CASE WHEN %(keep_since)s THEN coalesce(since, taken_at) END, taken_at = clock_timestamp(),
    heir_dag_id = NULL, heir_run_id = NULL
WHERE key = %(key)s AND version = %(version)s AND needs_attention IS NULL
RETURNING version
