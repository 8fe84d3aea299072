-- Every database of the cluster by name (templates included); run through psql -At, one name a line.
SELECT datname FROM pg_database;
