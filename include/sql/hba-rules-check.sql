-- pg_hba.conf as the server would load it now: lines it cannot parse, and reject rules.
SELECT count(*) FILTER (WHERE error IS NOT NULL) AS errors,
       count(*) FILTER (WHERE auth_method = 'reject') AS rejects,
       string_agg(error, '; ') AS details
FROM pg_hba_file_rules;
