-- The collation and character classification of template1: the cluster's initdb locale.
SELECT datcollate, datctype FROM pg_database WHERE datname = 'template1';
