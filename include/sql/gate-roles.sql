-- Roles the client gate keeps out: every role that can log in but the one this session uses (the tool's).
SELECT rolname FROM pg_roles
WHERE rolcanlogin AND rolname <> current_user
ORDER BY 1;
