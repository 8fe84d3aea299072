-- Whether the installation has the scripts of one version of an extension.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions
               WHERE name = %(extname)s AND version = %(version)s) AS present;
