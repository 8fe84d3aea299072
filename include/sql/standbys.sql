SELECT application_name, client_addr::text, state FROM pg_stat_replication;
