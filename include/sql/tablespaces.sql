-- Tablespaces outside the data directory: oid, name, location (pg_default and pg_global have none).
SELECT oid::bigint AS oid, spcname, pg_tablespace_location(oid) AS location
FROM pg_tablespace
WHERE pg_tablespace_location(oid) <> ''
ORDER BY oid;
