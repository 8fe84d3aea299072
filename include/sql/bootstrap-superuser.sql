-- The bootstrap superuser (the role with OID 10, created by initdb).
SELECT rolname FROM pg_roles WHERE oid = 10;
