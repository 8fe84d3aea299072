\echo Use "CREATE EXTENSION pg_tviews" to load this file. \quit
/* pg_tviews--0.1.5--0.1.6.sql -- update 0.1.5 -> 0.1.6 (SQL-only test stand-in) */

CREATE OR REPLACE FUNCTION public.pg_tviews_version()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT '0.1.6'::text $$;

COMMENT ON FUNCTION public.pg_tviews_get_queue() IS
    'pg_tviews: pending changes (one row per change, ordered by id)';
