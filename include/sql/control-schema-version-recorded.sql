SELECT coalesce(max(version), 0) AS version FROM pgupgrade.schema_version
