-- The version a CREATE EXTENSION without VERSION installs (the control file's default_version), read from
-- pg_catalog whatever the search path says.
SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = %(extname)s;
