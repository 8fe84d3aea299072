-- Only in a throwaway cluster of the new installation: pg_temp.pgupgrade_collation_version(provider, locale), the
-- version this installation gives a collation of that provider (libc, icu, builtin) and locale (NULL: unversioned,
-- as C); it creates and drops a temporary collation.
CREATE FUNCTION pg_temp.pgupgrade_collation_version(provider text, locale text) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE v text;
BEGIN
  EXECUTE format('CREATE COLLATION pg_temp.pgupgrade_probe (provider = %I, locale = %L)', provider, locale);
  EXECUTE 'SELECT pg_collation_actual_version(''pg_temp.pgupgrade_probe''::regcollation)' INTO v;
  DROP COLLATION pg_temp.pgupgrade_probe;
  RETURN v;
END $fn$;
