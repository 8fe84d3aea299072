-- What the running server archives with (archive_library exists from PostgreSQL 15 on: '' before).
SELECT current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command,
       coalesce(current_setting('archive_library', true), '') AS archive_library;
