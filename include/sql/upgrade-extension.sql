-- Operator-side migration of an extension update (the seed's scripts/upgrade-extension.sql), run by
-- pgupgrade.extension in the SAME transaction right after `ALTER EXTENSION ... UPDATE TO ...`: when anything
-- here raises, the update is rolled back with it and the database stays on the old version.
--
-- It repeats nothing the extension's own update script does; it verifies what the update must have left and
-- fills in what an older update script may have left empty. Idempotent: running it twice changes nothing.
--   1. the extension is at the target version;
--   2. every metadata row recorded before the update is still there, nothing was added, and every row's
--      backing table exists;
--   3. data migration for pg_tviews 0.2: source_hash filled where it is NULL (the 0.2.0 update script fills it
--      for existing rows; a row it missed would make the first refresh-less comparison wrong);
--   4. the functions removed by the target version are no longer part of the extension.
--
-- Parameters (bound by the driver, used only in the last statement): extname, target, metadata_table,
-- entity_column, backing_column (names from the extension profile), expected_entities and removed_functions
-- (text[]). Table and column names reach the dynamic SQL only through format's I conversion or regclass
-- output. Every percent sign in this file is doubled because the driver fills in the parameters of the whole
-- file; for the same reason no parameter placeholder may appear in a comment.

CREATE OR REPLACE FUNCTION pg_temp.pgupgrade_extension_migration(
    p_extname text, p_target text, p_metadata text, p_entity text, p_backing text,
    p_expected text[], p_removed text[])
RETURNS text
LANGUAGE plpgsql
AS $migration$
DECLARE
    v_ext      oid;
    v_version  text;
    v_meta     regclass;
    v_missing  text[];
    v_extra    text[];
    v_orphans  text[];
    v_left     text[];
    v_rows     bigint;
    v_filled   bigint := 0;
BEGIN
    -- 1. version
    SELECT e.oid, e.extversion INTO v_ext, v_version FROM pg_catalog.pg_extension e WHERE e.extname = p_extname;
    IF v_ext IS NULL THEN
        RAISE EXCEPTION 'upgrade-extension: extension %% is not installed in database %%', p_extname,
            current_database();
    END IF;
    IF v_version IS DISTINCT FROM p_target THEN
        RAISE EXCEPTION 'upgrade-extension: extension %% is at %%, expected %%', p_extname, v_version, p_target;
    END IF;

    -- the metadata table: the extension's own member table of that name (wherever its schema is)
    SELECT c.oid::regclass INTO v_meta
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_class c ON c.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = v_ext AND d.deptype = 'e' AND c.relname = p_metadata AND c.relkind IN ('r', 'p');
    IF v_meta IS NULL THEN
        RAISE EXCEPTION 'upgrade-extension: extension %% has no metadata table %%', p_extname, p_metadata;
    END IF;

    -- 2. every metadata row survived, none appeared, every backing table exists
    EXECUTE format('SELECT array_agg(x ORDER BY x) FROM (SELECT unnest($1) EXCEPT SELECT %%I FROM %%s) s(x)',
                   p_entity, v_meta)
       INTO v_missing USING coalesce(p_expected, '{}'::text[]);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-extension: metadata rows lost by the update: %%', array_to_string(v_missing, ', ');
    END IF;
    EXECUTE format('SELECT array_agg(x ORDER BY x) FROM (SELECT %%I FROM %%s EXCEPT SELECT unnest($1)) s(x)',
                   p_entity, v_meta)
       INTO v_extra USING coalesce(p_expected, '{}'::text[]);
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-extension: metadata rows that were not there before: %%',
            array_to_string(v_extra, ', ');
    END IF;
    EXECUTE format('SELECT array_agg(%%1$I::text ORDER BY %%1$I) FROM %%2$s'
                   ' WHERE %%3$I IS NULL OR pg_catalog.to_regclass(%%3$I::text) IS NULL',
                   p_entity, v_meta, p_backing)
       INTO v_orphans;
    IF v_orphans IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-extension: metadata rows whose backing table is missing: %%',
            array_to_string(v_orphans, ', ');
    END IF;
    EXECUTE format('SELECT count(*) FROM %%s', v_meta) INTO v_rows;

    -- 3. pg_tviews 0.2 data migration (only where the target has the column)
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = v_meta AND a.attname = 'source_hash' AND NOT a.attisdropped)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = v_meta AND a.attname = 'view_definition' AND NOT a.attisdropped) THEN
        EXECUTE format('UPDATE %%s SET source_hash = decode(md5(view_definition), ''hex'') WHERE source_hash IS NULL',
                       v_meta);
        GET DIAGNOSTICS v_filled = ROW_COUNT;
    END IF;

    -- 4. removed functions are gone from the extension
    SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid) INTO v_left
      FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = v_ext AND d.deptype = 'e'
       AND p.proname = ANY (coalesce(p_removed, '{}'::text[]));
    IF v_left IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-extension: functions removed in %% are still part of %%: %%', p_target, p_extname,
            array_to_string(v_left, ', ');
    END IF;

    RETURN format('%%s %%s: %%s metadata rows verified, %%s source hashes filled', p_extname, v_version, v_rows,
                  v_filled);
END
$migration$;

SELECT pg_temp.pgupgrade_extension_migration(
    %(extname)s, %(target)s, %(metadata_table)s, %(entity_column)s, %(backing_column)s,
    %(expected_entities)s::text[], %(removed_functions)s::text[]) AS result;
