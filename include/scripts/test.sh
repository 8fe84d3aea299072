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
echo "== import contracts (the library's floors, pyproject.toml)"
lint-imports --no-cache
echo "== hadolint"
hadolint Dockerfile
echo "== pytest"
# Test files run on PYTEST_WORKERS processes (each with its own servers, Airflow home and state dir); the tests
# that change the machine's PostgreSQL packages run afterwards, alone.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile -m "not apt" "$@"
python -m pytest -m apt "$@" || [ $? -eq 5 ]  # 5: no such test selected
