#!/usr/bin/env bash
# The main job: install everything, then upgrade a throwaway PostgreSQL 15 cluster with data to the newest
# installed major through the pg_major_upgrade DAG, and print the report.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/install.sh"
# shellcheck source=include/scripts/env.sh
source "$HERE/env.sh"
python "$HERE/demo.py"
