-- One row when a role of this name exists, none otherwise.
SELECT 1 FROM pg_roles WHERE rolname = %(role)s;
