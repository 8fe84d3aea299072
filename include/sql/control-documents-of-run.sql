SELECT name, body FROM pgupgrade.documents WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s
