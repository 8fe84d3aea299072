-- Relations pg_upgrade has to transfer (link/swap time grows with this number).
SELECT count(*) AS relations
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'i', 'm', 'S', 't', 'p', 'I')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema');
