-- Every relation of this database, system catalogs included (a rough measure of pg_upgrade's work).
SELECT count(*) FROM pg_class;
