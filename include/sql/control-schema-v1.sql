-- Control database, schema version 1: runs' journals and documents, per-cluster locks, outage slots.
-- Applied once by pgupgrade.state.control.migrate (inside one transaction, under an advisory lock).
CREATE SCHEMA IF NOT EXISTS pgupgrade;

CREATE TABLE pgupgrade.schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE pgupgrade.journal (
    id         bigserial PRIMARY KEY,
    event_id   uuid NOT NULL UNIQUE,          -- written by the client: a retried insert is not doubled
    dag_id     text NOT NULL,
    run_id     text NOT NULL,
    event      text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    details    jsonb NOT NULL DEFAULT '{}',
    spooled    boolean NOT NULL DEFAULT false -- written to the database host first, reconciled later
);
CREATE INDEX journal_run ON pgupgrade.journal (dag_id, run_id, id);

CREATE TABLE pgupgrade.documents (
    dag_id     text NOT NULL,
    run_id     text NOT NULL,
    name       text NOT NULL,
    body       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (dag_id, run_id, name)
);

-- One row per cluster; every transition is one statement guarded by the row's version.
CREATE TABLE pgupgrade.locks (
    key             text PRIMARY KEY,          -- the cluster: database host's node name + data directory
    version         bigint NOT NULL DEFAULT 1,
    dag_id          text NOT NULL,
    run_id          text NOT NULL,
    worker          text NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    since           timestamptz,
    heir_dag_id     text,
    heir_run_id     text,
    needs_attention text
);

-- Bounded concurrent outages: slot numbers 1..N, one per run inside an outage.
CREATE TABLE pgupgrade.outage_slots (
    slot     integer PRIMARY KEY,
    key      text NOT NULL,
    dag_id   text NOT NULL,
    run_id   text NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (dag_id, run_id)
);
