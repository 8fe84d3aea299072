INSERT INTO pgupgrade.schema_version (version) VALUES (%(version)s)
