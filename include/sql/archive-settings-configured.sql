-- What the configuration files set for archiving (the last setting of each wins), whatever the running server
-- was started with: a private start overrides archive_mode on its command line, the public start will not.
SELECT name, setting
  FROM pg_file_settings
 WHERE name IN ('archive_mode', 'archive_command', 'archive_library') AND error IS NULL
 ORDER BY seqno;
