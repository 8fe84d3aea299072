-- Every version pair ALTER EXTENSION ... UPDATE can go between, with the chain of update scripts it runs.
SELECT source, target, path FROM pg_extension_update_paths(%(extname)s) WHERE path IS NOT NULL ORDER BY 1, 2;
