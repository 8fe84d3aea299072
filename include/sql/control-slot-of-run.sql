SELECT slot FROM pgupgrade.outage_slots WHERE dag_id = %(dag_id)s AND run_id = %(run_id)s
