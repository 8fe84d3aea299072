-- The running server's version as a number (e.g. 160002): major and minor release.
SHOW server_version_num;
