SELECT current_setting('hba_file') AS hba_file;
