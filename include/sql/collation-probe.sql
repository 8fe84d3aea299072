-- The version the installation gives a collation (after collation-probe-function, in the same session).
SELECT pg_temp.pgupgrade_collation_version(%(provider)s, %(locale)s) AS version;
