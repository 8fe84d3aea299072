SELECT e.extname, e.extversion, a.default_version
FROM pg_extension e
LEFT JOIN pg_available_extensions a ON a.name = e.extname
WHERE e.extname <> 'plpgsql'
ORDER BY 1;
