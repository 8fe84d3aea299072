SELECT pg_reload_conf() AS reloaded;
