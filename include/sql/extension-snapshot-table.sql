-- The pre-upgrade documentation of an extension's state, kept in the database itself (pgupgrade.extension):
-- one row per TVIEW/entity and run. Schema-qualified; run ids are values, never identifiers. The table is
-- small and is left in place as the audit trail of past runs (drop the schema pgupgrade when not wanted);
-- it is created after the run's backup, so a rollback's restore neither needs nor removes it.
CREATE SCHEMA IF NOT EXISTS pgupgrade;
CREATE TABLE IF NOT EXISTS pgupgrade.extension_snapshot (
    dag_id       text        NOT NULL,
    run_id       text        NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    extname      text        NOT NULL,
    extversion   text        NOT NULL,
    entity       text        NOT NULL,
    metadata     jsonb       NOT NULL,
    tview_columns jsonb,
    tview_rows   bigint,
    PRIMARY KEY (dag_id, run_id, entity)
);
COMMENT ON TABLE pgupgrade.extension_snapshot IS
    'pgupgrade: extension metadata and TVIEW state documented before an extension upgrade (one row per entity and run)';
