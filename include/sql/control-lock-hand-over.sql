UPDATE pgupgrade.locks SET version = version + 1, heir_dag_id = %(heir_dag_id)s, heir_run_id = %(heir_run_id)s
WHERE key = %(key)s AND dag_id = %(dag_id)s AND run_id = %(run_id)s
