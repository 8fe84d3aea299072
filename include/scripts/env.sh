# Sourced by the scripts: the environment every command of this project runs in.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PGBIN="${PGUPGRADE_PGBIN:-/opt/pgbin}"
export PATH="$ROOT/.venv/bin:$PATH"
bindirs="$(ls -d "$PGBIN"/*/usr/lib/postgresql/*/bin 2>/dev/null | paste -sd: -)"
export PGUPGRADE_BINDIRS="${PGUPGRADE_BINDIRS:-$bindirs}"
