DELETE FROM pgupgrade.locks WHERE key = %(key)s AND dag_id = %(dag_id)s AND run_id = %(run_id)s RETURNING key
