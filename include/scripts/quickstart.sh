#!/usr/bin/env bash
# A local Airflow to try the DAGs from the UI (the distributed test topology, kept running):
#   quickstart.sh up      installs (install.sh), then starts api-server, scheduler, dag-processor, triggerer, two
#                         Celery workers (redis broker), a metadata + control PostgreSQL 17 on 127.0.0.1, and a
#                         second database host (127.0.0.2: sshd + a PostgreSQL 15.18 cluster with sample data);
#                         registers the connections, unpauses the upgrade and rollback DAGs, prints how to log in
#                         and what to trigger. Already up: prints that again (nothing started twice).
#   quickstart.sh status  what runs (by PID), whether the api-server answers
#   quickstart.sh down    stops everything `up` started, by PID, and removes its directory
#   quickstart.sh airflow ARGS...   the airflow CLI against this deployment (e.g. `airflow dags list`)
# Everything lives under $PGUPGRADE_QUICKSTART_DIR (default /tmp/pgupgrade-quickstart); state.json there.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "${1:-}" = up ]; then
  bash "$HERE/install.sh"
fi
# shellcheck source=include/scripts/env.sh
source "$HERE/env.sh"
exec python "$HERE/quickstart.py" "$@"
