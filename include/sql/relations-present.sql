-- Which of the given relation names exist in schema public.
SELECT c.relname, to_regclass(format('public.%%I', c.relname)) IS NOT NULL AS present
FROM unnest(%(names)s::text[]) AS c(relname)
ORDER BY 1;
