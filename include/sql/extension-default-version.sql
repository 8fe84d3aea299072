-- The version a CREATE EXTENSION without VERSION installs (the control file's default_version).
SELECT default_version FROM pg_available_extensions WHERE name = %(extname)s;
