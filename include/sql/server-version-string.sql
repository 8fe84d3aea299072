-- The running server's full version string: release, platform and compiler.
SELECT version();
