-- DDL on busy tables gives up after this long instead of queueing forever; for the current transaction only.
SET LOCAL lock_timeout = %(timeout)s;
