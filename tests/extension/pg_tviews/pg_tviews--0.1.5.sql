\echo Use "CREATE EXTENSION pg_tviews" to load this file. \quit
/* pg_tviews--0.1.5.sql -- fresh install of version 0.1.5 (SQL-only test stand-in) */

-------------------------------------------------------------------------------
-- Catalog tables (extension configuration tables: pg_dump dumps their rows)
-------------------------------------------------------------------------------

CREATE TABLE public.pg_tviews_metadata (
    entity_name        text PRIMARY KEY,
    backing_table_name text,
    view_definition    text NOT NULL,
    last_refreshed     timestamptz,
    last_error         text,
    internal_version   integer NOT NULL DEFAULT 1
);
COMMENT ON TABLE public.pg_tviews_metadata IS
    'pg_tviews: one row per TVIEW (entity name, backing table, defining SELECT, refresh status)';
SELECT pg_catalog.pg_extension_config_dump('public.pg_tviews_metadata', '');

CREATE TABLE public.pg_tviews_queue (
    id          bigserial PRIMARY KEY,
    entity_name text NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    op          text
);
CREATE INDEX pg_tviews_queue_entity_idx ON public.pg_tviews_queue (entity_name);
COMMENT ON TABLE public.pg_tviews_queue IS
    'pg_tviews: pending changes, one row per modifying statement on a backing table';
SELECT pg_catalog.pg_extension_config_dump('public.pg_tviews_queue', '');
SELECT pg_catalog.pg_extension_config_dump('public.pg_tviews_queue_id_seq', '');

-------------------------------------------------------------------------------
-- Functions
-------------------------------------------------------------------------------

CREATE FUNCTION public.pg_tviews_version()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT '0.1.5'::text $$;
COMMENT ON FUNCTION public.pg_tviews_version() IS 'pg_tviews: extension version';

-- Statement-level trigger function installed on backing tables by
-- pg_tviews_create(); TG_ARGV[0] is the entity (TVIEW) name.
-- SECURITY DEFINER so that roles writing to a backing table do not need
-- privileges on pg_tviews_queue.
CREATE FUNCTION public.pg_tviews_enqueue()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF TG_NARGS < 1 OR TG_ARGV[0] IS NULL THEN
        RAISE EXCEPTION 'pg_tviews_enqueue: trigger % on %.% has no entity name argument',
            TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    INSERT INTO public.pg_tviews_queue (entity_name, op) VALUES (TG_ARGV[0], TG_OP);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION public.pg_tviews_enqueue() IS
    'pg_tviews: statement trigger on backing tables; enqueues one change for TVIEW TG_ARGV[0]';

-- One row per pending change.
CREATE FUNCTION public.pg_tviews_get_queue()
RETURNS TABLE (id bigint, entity_name text, op text, enqueued_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, public
AS $$
    SELECT q.id, q.entity_name, q.op, q.enqueued_at
    FROM public.pg_tviews_queue q
    ORDER BY q.id
$$;
COMMENT ON FUNCTION public.pg_tviews_get_queue() IS
    'pg_tviews: pending changes (one row per change)';

CREATE FUNCTION public.pg_tviews_create(entity_name text, backing_table regclass, definition text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
#variable_conflict use_column
DECLARE
    v_entity  text := $1;
    v_def     text := regexp_replace($3, '[[:space:];]+$', '');
    v_backing text;
    v_relkind "char";
BEGIN
    IF v_entity IS NULL OR v_entity = '' THEN
        RAISE EXCEPTION 'pg_tviews_create: entity name must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF $2 IS NULL THEN
        RAISE EXCEPTION 'pg_tviews_create: backing table must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_def IS NULL OR v_def = '' THEN
        RAISE EXCEPTION 'pg_tviews_create: definition must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM public.pg_tviews_metadata m WHERE m.entity_name = v_entity) THEN
        RAISE EXCEPTION 'pg_tviews_create: TVIEW "%" already exists', v_entity
            USING ERRCODE = 'duplicate_object';
    END IF;

    SELECT format('%I.%I', n.nspname, c.relname), c.relkind
      INTO v_backing, v_relkind
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = $2;
    IF v_relkind IS NULL OR v_relkind NOT IN ('r', 'p', 'f') THEN
        RAISE EXCEPTION 'pg_tviews_create: "%" is not a table', v_backing
            USING ERRCODE = 'wrong_object_type';
    END IF;

    EXECUTE format('CREATE TABLE public.%I AS %s', v_entity, v_def);

    INSERT INTO public.pg_tviews_metadata (entity_name, backing_table_name, view_definition, last_refreshed)
    VALUES (v_entity, v_backing, v_def, now());

    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION public.pg_tviews_enqueue(%L)',
        'pg_tviews_' || v_entity || '_trg', v_backing, v_entity);
END
$$;
COMMENT ON FUNCTION public.pg_tviews_create(text, regclass, text) IS
    'pg_tviews: create TVIEW table public.<entity_name> from definition and a change trigger on backing_table';

-- force is accepted for API compatibility; the stand-in always does a full rebuild.
CREATE FUNCTION public.pg_tviews_refresh(name text, force boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_entity text := $1;
    v_def    text;
    v_err    text;
BEGIN
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

    UPDATE public.pg_tviews_metadata m
       SET last_refreshed = now(),
           last_error     = NULL
     WHERE m.entity_name = v_entity;
    DELETE FROM public.pg_tviews_queue q WHERE q.entity_name = v_entity;
END
$$;
COMMENT ON FUNCTION public.pg_tviews_refresh(text, boolean) IS
    'pg_tviews: rebuild a TVIEW from its definition and clear its queue entries';

CREATE FUNCTION public.pg_tviews_refresh_async(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_entity text := $1;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.pg_tviews_metadata m WHERE m.entity_name = v_entity) THEN
        RAISE EXCEPTION 'pg_tviews_refresh_async: TVIEW "%" does not exist', v_entity
            USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO public.pg_tviews_queue (entity_name, op) VALUES (v_entity, 'REFRESH');
END
$$;
COMMENT ON FUNCTION public.pg_tviews_refresh_async(text) IS
    'pg_tviews: request a refresh (enqueues it; processed by pg_tviews_drain_queue)';

-- Refresh every TVIEW that has pending changes; returns the number of TVIEWs
-- refreshed.  A failing TVIEW gets last_error set (persisted), keeps its queue
-- rows, and a WARNING is raised; the others are still refreshed.
CREATE FUNCTION public.pg_tviews_drain_queue()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $$
DECLARE
    v_entity text;
    v_err    text;
    v_n      integer := 0;
BEGIN
    FOR v_entity IN
        SELECT DISTINCT q.entity_name FROM public.pg_tviews_queue q ORDER BY 1
    LOOP
        IF NOT EXISTS (SELECT 1 FROM public.pg_tviews_metadata m WHERE m.entity_name = v_entity) THEN
            -- orphaned entries (TVIEW no longer registered)
            DELETE FROM public.pg_tviews_queue q WHERE q.entity_name = v_entity;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM public.pg_tviews_refresh(v_entity, true);
            v_n := v_n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
            UPDATE public.pg_tviews_metadata m SET last_error = v_err WHERE m.entity_name = v_entity;
            RAISE WARNING 'pg_tviews: refresh of TVIEW "%" failed: %', v_entity, v_err;
        END;
    END LOOP;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION public.pg_tviews_drain_queue() IS
    'pg_tviews: refresh all TVIEWs with pending changes; returns the number refreshed';
