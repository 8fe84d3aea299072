-- The running server's version as text (e.g. 16.2).
SHOW server_version;
