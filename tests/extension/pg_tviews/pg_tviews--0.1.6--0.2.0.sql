\echo Use "CREATE EXTENSION pg_tviews" to load this file. \quit
/* pg_tviews--0.1.6--0.2.0.sql -- update 0.1.6 -> 0.2.0 (SQL-only test stand-in) */

-- pg_tviews_metadata: drop internal_version, add the 0.2.0 columns.
-- Existing rows (TVIEW registrations) are kept; TVIEW tables and triggers are
-- untouched (the trigger function pg_tviews_enqueue() is not replaced).
ALTER TABLE public.pg_tviews_metadata
    DROP COLUMN internal_version,
    ADD COLUMN stats_last_computed timestamp,
    ADD COLUMN query_plan          text,
    ADD COLUMN source_hash         bytea;

UPDATE public.pg_tviews_metadata SET source_hash = decode(md5(view_definition), 'hex');

-- removed in 0.2.0
DROP FUNCTION public.pg_tviews_refresh_async(text);

-- parameter renamed (name -> entity_name) and force got a default:
-- CREATE OR REPLACE cannot do that, so drop and re-create.
DROP FUNCTION public.pg_tviews_refresh(text, boolean);

CREATE OR REPLACE FUNCTION public.pg_tviews_version()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT '0.2.0'::text $$;

-- force is accepted for API compatibility; the stand-in always does a full rebuild.
-- GUCs (read with current_setting(..., missing_ok => true); a SQL-only
-- extension cannot define them):
--   pg_tviews.enable_stats      boolean, default on
--   pg_tviews.stats_sample_size integer, default 10000 (read, no effect here)
CREATE FUNCTION public.pg_tviews_refresh(entity_name text, force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
#variable_conflict use_column
DECLARE
    v_entity text := $1;
    v_def    text;
    v_err    text;
    v_plan   text;
    v_line   text;
    v_stats  boolean;
BEGIN
    v_stats := lower(coalesce(nullif(btrim(current_setting('pg_tviews.enable_stats', true)), ''), 'on'))
               IN ('on', 'true', 't', 'yes', 'y', '1');

    SELECT m.view_definition INTO v_def
      FROM public.pg_tviews_metadata m
     WHERE m.entity_name = v_entity
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_tviews_refresh: TVIEW "%" does not exist', v_entity
            USING ERRCODE = 'undefined_object';
    END IF;

    BEGIN
        EXECUTE format('DELETE FROM public.%I', v_entity);
        EXECUTE format('INSERT INTO public.%I %s', v_entity, v_def);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
        -- NB: persists only if the caller's transaction survives (see README)
        UPDATE public.pg_tviews_metadata m SET last_error = v_err WHERE m.entity_name = v_entity;
        RAISE;
    END;

    -- query_plan: EXPLAIN (COSTS OFF) of the definition; 'full rebuild' if that fails
    BEGIN
        FOR v_line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || v_def LOOP
            v_plan := concat_ws(E'\n', v_plan, v_line);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        v_plan := NULL;
    END;

    UPDATE public.pg_tviews_metadata m
       SET last_refreshed      = now(),
           last_error          = NULL,
           stats_last_computed = CASE WHEN v_stats THEN now()::timestamp ELSE m.stats_last_computed END,
           query_plan          = coalesce(v_plan, 'full rebuild'),
           source_hash         = decode(md5(m.view_definition), 'hex')
     WHERE m.entity_name = v_entity;
    DELETE FROM public.pg_tviews_queue q WHERE q.entity_name = v_entity;
END
$$;
COMMENT ON FUNCTION public.pg_tviews_refresh(text, boolean) IS
    'pg_tviews: rebuild a TVIEW from its definition, update stats/plan/hash and clear its queue entries';

-- One row per TVIEW; row_count is counted from the TVIEW table (NULL if it is missing).
CREATE FUNCTION public.pg_tviews_stats()
RETURNS TABLE (entity_name text, row_count bigint, last_refreshed timestamptz, stats_last_computed timestamp)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, public
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT m.entity_name AS e, m.last_refreshed AS lr, m.stats_last_computed AS slc
          FROM public.pg_tviews_metadata m
         ORDER BY m.entity_name
    LOOP
        entity_name         := r.e;
        last_refreshed      := r.lr;
        stats_last_computed := r.slc;
        row_count           := NULL;
        IF pg_catalog.to_regclass(format('public.%I', r.e)) IS NOT NULL THEN
            EXECUTE format('SELECT count(*) FROM public.%I', r.e) INTO row_count;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION public.pg_tviews_stats() IS
    'pg_tviews: one row per TVIEW with its current row count and refresh/stats timestamps';

-- Zero rows when everything is fine; otherwise one row per problem.
CREATE FUNCTION public.pg_tviews_validate()
RETURNS TABLE (entity_name text, issue text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, public
AS $$
    SELECT m.entity_name, i.issue
      FROM public.pg_tviews_metadata m
     CROSS JOIN LATERAL (
            SELECT pg_catalog.to_regclass(format('public.%I', m.entity_name)) AS tview_oid,
                   CASE WHEN m.backing_table_name IS NOT NULL
                        THEN pg_catalog.to_regclass(m.backing_table_name) END AS backing_oid,
                   ('pg_tviews_' || m.entity_name || '_trg')::name AS trg_name
          ) r
     CROSS JOIN LATERAL (
            SELECT 'TVIEW table public.' || quote_ident(m.entity_name) || ' is missing'
             WHERE r.tview_oid IS NULL
            UNION ALL
            SELECT 'backing table ' || coalesce(m.backing_table_name, '<NULL>') || ' is missing'
             WHERE r.backing_oid IS NULL
            UNION ALL
            SELECT 'last refresh failed: ' || m.last_error
             WHERE m.last_error IS NOT NULL
            UNION ALL
            SELECT 'trigger ' || quote_ident(r.trg_name) || ' is missing on ' || m.backing_table_name
             WHERE r.backing_oid IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                                WHERE t.tgrelid = r.backing_oid AND t.tgname = r.trg_name)
            UNION ALL
            SELECT 'trigger ' || quote_ident(r.trg_name) || ' is disabled on ' || m.backing_table_name
             WHERE r.backing_oid IS NOT NULL
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                            WHERE t.tgrelid = r.backing_oid AND t.tgname = r.trg_name
                              AND t.tgenabled = 'D')
          ) i(issue)
     ORDER BY 1, 2
$$;
COMMENT ON FUNCTION public.pg_tviews_validate() IS
    'pg_tviews: consistency check; zero rows means every TVIEW is healthy';
