"""pgupgrade: PostgreSQL upgrade runbooks as Airflow DAGs — the library behind the DAGs."""
