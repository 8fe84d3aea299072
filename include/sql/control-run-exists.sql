SELECT EXISTS (SELECT FROM pgupgrade.journal WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s)
    OR EXISTS (SELECT FROM pgupgrade.documents WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s) AS exists
