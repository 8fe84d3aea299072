SELECT rolname, rolcanlogin, rolsuper
FROM pg_roles
WHERE rolname !~ '^pg_'
ORDER BY rolname;
