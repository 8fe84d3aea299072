-- Each connectable database's default collation: provider (c libc, i icu, b builtin), locale, the version recorded
-- when it was created (or last refreshed) and the version this installation gives it now (PostgreSQL 15+).
SELECT d.oid::bigint AS oid, d.datname, d.datlocprovider::text AS provider, d.datcollate AS collate,
       coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') AS locale,
       d.datcollversion AS recorded_version,
       pg_database_collation_actual_version(d.oid) AS actual_version
FROM pg_database d
WHERE d.datallowconn
ORDER BY d.datname;
