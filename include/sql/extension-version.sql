-- The installed version of an extension in this database; no row when it is not installed.
SELECT extversion FROM pg_extension WHERE extname = %(extname)s;
