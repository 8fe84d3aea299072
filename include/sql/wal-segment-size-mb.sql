-- The cluster's WAL segment size in megabytes (initdb --wal-segsize).
SELECT setting::bigint / 1048576 FROM pg_settings WHERE name = 'wal_segment_size';
