#!/usr/bin/env bash
# The test command: static checks, then the whole test suite against real PostgreSQL servers.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/install.sh"
# shellcheck source=include/scripts/env.sh
source "$HERE/env.sh"
cd "$ROOT"
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== hadolint"
hadolint Dockerfile
echo "== pytest"
python -m pytest "$@"
