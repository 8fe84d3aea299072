SELECT gid, database, owner, prepared FROM pg_prepared_xacts ORDER BY prepared;
