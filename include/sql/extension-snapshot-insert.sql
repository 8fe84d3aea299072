-- One row of the pre-upgrade documentation of an extension (the table of extension-snapshot-table): a TVIEW's
-- metadata row, columns and row count; taken again in the same run, the row is replaced.
INSERT INTO pgupgrade.extension_snapshot
    (dag_id, run_id, extname, extversion, entity, metadata, tview_columns, tview_rows)
VALUES (%(dag_id)s, %(run_id)s, %(extname)s, %(extversion)s, %(entity)s, %(metadata)s::jsonb,
        %(tview_columns)s::jsonb, %(tview_rows)s)
ON CONFLICT (dag_id, run_id, entity) DO UPDATE SET taken_at = now(), metadata = EXCLUDED.metadata,
    tview_columns = EXCLUDED.tview_columns, tview_rows = EXCLUDED.tview_rows;
