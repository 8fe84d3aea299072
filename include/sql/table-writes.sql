-- Tuples written per table since the statistics were reset (inserts + updates + deletes, also by aborted
-- transactions).
SELECT schemaname::text AS schema, relname::text AS name, n_tup_ins + n_tup_upd + n_tup_del AS writes
FROM pg_catalog.pg_stat_user_tables;
