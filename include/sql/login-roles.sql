-- Roles that can log in, except the bootstrap superuser and the role this session uses.
SELECT rolname FROM pg_roles
WHERE rolcanlogin AND oid <> 10 AND rolname <> current_user
ORDER BY 1;
