-- The on-disk size of one database, in bytes.
SELECT pg_database_size(%(datname)s);
