-- An extension's configuration tables and sequences (pg_extension.extconfig): pg_dump dumps their rows.
SELECT coalesce(array(SELECT t::regclass::text FROM unnest(e.extconfig) AS t ORDER BY 1), '{}') AS config
FROM pg_catalog.pg_extension e WHERE e.extname = %(extname)s;
