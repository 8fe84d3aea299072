-- The lowest free outage slot of 1..%(slots)s for this run; no row back = all taken (or a contender won it).
INSERT INTO pgupgrade.outage_slots (slot, key, dag_id, run_id)
SELECT s, %(key)s, %(dag_id)s, %(run_id)s
FROM generate_series(1, %(slots)s) AS s
WHERE s NOT IN (SELECT slot FROM pgupgrade.outage_slots)
ORDER BY s LIMIT 1
ON CONFLICT DO NOTHING
RETURNING slot
