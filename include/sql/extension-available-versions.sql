-- The versions of an extension whose scripts are installed on the server.
SELECT version FROM pg_available_extension_versions WHERE name = %(extname)s;
