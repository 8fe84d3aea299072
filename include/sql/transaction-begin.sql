-- Opens a transaction block on a connection in autocommit mode (ended by transaction-rollback).
BEGIN;
