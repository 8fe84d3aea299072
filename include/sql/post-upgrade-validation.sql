-- Post-upgrade validation of ONE database, standalone (the seed's scripts/post-upgrade-validation.sql):
--
--     psql -X -v ON_ERROR_STOP=1 -d <database> -f include/sql/post-upgrade-validation.sql
--
-- Run it in every database after an upgrade (the DAGs run the same checks as tasks), e.g.
--     for db in $(psql -XAtc "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"); do
--         psql -X -v ON_ERROR_STOP=1 -d "$db" -f include/sql/post-upgrade-validation.sql || echo "FAILED: $db"
--     done
--
-- Prints one NOTICE per check (PASS/FAIL) and, when any check fails, ends with an ERROR that lists the problems:
-- psql then exits non-zero (3). Read-only: it works on a primary and on a hot standby (where the first check fails).
--   generic (always):       server not in recovery; no invalid indexes; no disabled trigger (pg_trigger.tgenabled
--                           = 'D') whose name starts with the extension's trigger prefix
--   extension (only where it is installed in this database): version readable through the version function;
--                           no metadata row with an error, a NULL backing table or a backing table that is gone;
--                           queue empty
-- Names default to the pg_tviews profile (include/config/extension_profiles.json); override with psql variables:
--     -v extname=... -v version_function=... -v metadata_table=... -v entity_column=... -v backing_column=...
--     -v error_column=... -v queue_function=... -v trigger_prefix=...
-- They reach the checks as session settings (set_config) and the dynamic SQL only through format('%I').
-- Not used by the library (pgupgrade.sql): psql meta-commands below.

\set ON_ERROR_STOP on
\set QUIET on
\if :{?extname}
\else
    \set extname pg_tviews
\endif
\if :{?version_function}
\else
    \set version_function pg_tviews_version
\endif
\if :{?metadata_table}
\else
    \set metadata_table pg_tviews_metadata
\endif
\if :{?entity_column}
\else
    \set entity_column entity_name
\endif
\if :{?backing_column}
\else
    \set backing_column backing_table_name
\endif
\if :{?error_column}
\else
    \set error_column last_error
\endif
\if :{?queue_function}
\else
    \set queue_function pg_tviews_get_queue
\endif
\if :{?trigger_prefix}
\else
    \set trigger_prefix pg_tviews_
\endif

SELECT set_config('pgupgrade.extname', :'extname', false),
       set_config('pgupgrade.version_function', :'version_function', false),
       set_config('pgupgrade.metadata_table', :'metadata_table', false),
       set_config('pgupgrade.entity_column', :'entity_column', false),
       set_config('pgupgrade.backing_column', :'backing_column', false),
       set_config('pgupgrade.error_column', :'error_column', false),
       set_config('pgupgrade.queue_function', :'queue_function', false),
       set_config('pgupgrade.trigger_prefix', :'trigger_prefix', false)
\gset pgupgrade_ignored_

\set QUIET off

DO $validation$
DECLARE
    v_ext      text := current_setting('pgupgrade.extname');
    v_version_fn text := current_setting('pgupgrade.version_function');
    v_metadata text := current_setting('pgupgrade.metadata_table');
    v_entity   text := current_setting('pgupgrade.entity_column');
    v_backing  text := current_setting('pgupgrade.backing_column');
    v_error    text := current_setting('pgupgrade.error_column');
    v_queue_fn text := current_setting('pgupgrade.queue_function');
    v_prefix   text := current_setting('pgupgrade.trigger_prefix');
    v_problems text[] := '{}';
    v_list     text;
    v_extversion text;
    v_reported text;
    v_count    bigint;
BEGIN
    -- generic: the server is a primary
    IF pg_catalog.pg_is_in_recovery() THEN
        v_problems := v_problems || 'server is in recovery (a standby, or recovery has not finished)'::text;
        RAISE NOTICE 'FAIL  server not in recovery';
    ELSE
        RAISE NOTICE 'PASS  server not in recovery (PostgreSQL %)', current_setting('server_version');
    END IF;

    -- generic: no invalid indexes (a failed CREATE INDEX CONCURRENTLY, or an index pg_upgrade could not carry)
    SELECT string_agg(i.indexrelid::regclass::text, ', ' ORDER BY 1) INTO v_list
      FROM pg_catalog.pg_index i WHERE NOT i.indisvalid;
    IF v_list IS NOT NULL THEN
        v_problems := v_problems || ('invalid indexes: ' || v_list);
        RAISE NOTICE 'FAIL  no invalid indexes: %', v_list;
    ELSE
        RAISE NOTICE 'PASS  no invalid indexes';
    END IF;

    -- generic: no disabled trigger with the prefix (pg_trigger: information_schema has no enabled flag)
    SELECT string_agg(t.tgrelid::regclass::text || '.' || quote_ident(t.tgname), ', ' ORDER BY 1) INTO v_list
      FROM pg_catalog.pg_trigger t
     WHERE NOT t.tgisinternal AND t.tgenabled = 'D' AND left(t.tgname, length(v_prefix)) = v_prefix;
    IF v_list IS NOT NULL THEN
        v_problems := v_problems || ('disabled ' || v_prefix || '* triggers: ' || v_list);
        RAISE NOTICE 'FAIL  no disabled %* triggers: %', v_prefix, v_list;
    ELSE
        RAISE NOTICE 'PASS  no disabled %* triggers', v_prefix;
    END IF;

    -- extension checks, only where it is installed
    SELECT e.extversion INTO v_extversion FROM pg_catalog.pg_extension e WHERE e.extname = v_ext;
    IF v_extversion IS NULL THEN
        RAISE NOTICE 'SKIP  extension % is not installed in database %: extension checks skipped',
            v_ext, current_database();
    ELSE
        -- version readable through the extension's own function (its library loads, its SQL is in place)
        BEGIN
            EXECUTE format('SELECT %I()::text', v_version_fn) INTO v_reported;
            IF v_reported IS NULL THEN
                v_problems := v_problems || format('%s() returned NULL', v_version_fn);
                RAISE NOTICE 'FAIL  % version readable: %() returned NULL', v_ext, v_version_fn;
            ELSE
                RAISE NOTICE 'PASS  % version readable: % (pg_extension.extversion %)', v_ext, v_reported,
                    v_extversion;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_problems := v_problems || format('%s() fails: %s', v_version_fn, SQLERRM);
            RAISE NOTICE 'FAIL  % version readable: %() fails: %', v_ext, v_version_fn, SQLERRM;
        END;

        -- metadata: no error, a backing table named and present
        BEGIN
            EXECUTE format('SELECT string_agg(format(''%%s (%%s)'', %1$I, CASE WHEN %2$I IS NOT NULL'
                           ' THEN ''error: '' || %2$I WHEN %3$I IS NULL THEN ''no backing table'''
                           ' ELSE ''backing table '' || %3$I || '' is gone'' END), '', '' ORDER BY %1$I)'
                           ' FROM %4$I WHERE %2$I IS NOT NULL OR %3$I IS NULL'
                           ' OR pg_catalog.to_regclass(%3$I::text) IS NULL',
                           v_entity, v_error, v_backing, v_metadata)
               INTO v_list;
            IF v_list IS NOT NULL THEN
                v_problems := v_problems || ('metadata problems: ' || v_list);
                RAISE NOTICE 'FAIL  % metadata without errors: %', v_metadata, v_list;
            ELSE
                EXECUTE format('SELECT count(*) FROM %I', v_metadata) INTO v_count;
                RAISE NOTICE 'PASS  % metadata without errors (% TVIEWs)', v_metadata, v_count;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_problems := v_problems || format('metadata table %s not readable: %s', v_metadata, SQLERRM);
            RAISE NOTICE 'FAIL  % metadata readable: %', v_metadata, SQLERRM;
        END;

        -- queue empty
        BEGIN
            EXECUTE format('SELECT count(*) FROM %I()', v_queue_fn) INTO v_count;
            IF v_count > 0 THEN
                v_problems := v_problems || format('queue not empty (%s entries)', v_count);
                RAISE NOTICE 'FAIL  queue empty: % entries', v_count;
            ELSE
                RAISE NOTICE 'PASS  queue empty';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_problems := v_problems || format('%s() fails: %s', v_queue_fn, SQLERRM);
            RAISE NOTICE 'FAIL  queue readable: %() fails: %', v_queue_fn, SQLERRM;
        END;
    END IF;

    IF cardinality(v_problems) > 0 THEN
        RAISE EXCEPTION 'post-upgrade validation of database % failed: %', current_database(),
            array_to_string(v_problems, '; ')
            USING HINT = 'see the FAIL lines above; nothing was changed';
    END IF;
    RAISE NOTICE 'post-upgrade validation of database % passed', current_database();
END
$validation$;
