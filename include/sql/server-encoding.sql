-- The cluster's encoding; initdb of a new cluster for pg_upgrade must use the same.
SHOW server_encoding;
