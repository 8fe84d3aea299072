#!/usr/bin/env bash
# The full fault matrix (every DAG family × every step × injected and realistic causes); writes docs/reliability.md.
#   bash tests/reliability/run.sh [--family major-link] [--cause inject] [--limit N] [--out FILE]
# Prints one table row per case; the whole log (Airflow's and the servers') goes to $RELIABILITY_LOG.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=include/scripts/env.sh
source "$ROOT/include/scripts/env.sh"
cd "$ROOT"
LOG="${RELIABILITY_LOG:-/tmp/pgupgrade-reliability.log}"
echo "log: $LOG"
set +e
python tests/reliability/fault_matrix.py "$@" >"$LOG" 2>&1 &
pid=$!
tail -n +1 -F --pid="$pid" "$LOG" 2>/dev/null | grep --line-buffered -E '^\| |cases in |steps, successful|^harness'
wait "$pid"
