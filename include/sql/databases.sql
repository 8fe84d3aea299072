-- Databases that hold user data (template0 never does).
SELECT datname, pg_database_size(oid) AS size_bytes, datallowconn
FROM pg_database
WHERE datname <> 'template0'
ORDER BY datname;
