"""The major-version runbook (pg15-to-pg16.md and its siblings, and any supported major straight to a newer one).

fields (the DAG params) → plan (no side effects) → prepare (backup, rehearsal, the new cluster before the
outage) → cutover (the outage-critical steps, one task) → after (clients back: refresh, analyze, performance,
report); rollback (decided from the journal and the files on disk); cleanup (the old cluster, on request).
transfer holds the mechanics: pg_upgrade, dump/restore, the configuration carried over.
"""
