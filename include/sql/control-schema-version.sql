-- The control database's schema version (0: never migrated).
SELECT CASE WHEN to_regclass('pgupgrade.schema_version') IS NULL THEN 0 END AS version
