# Sourced by the scripts: the environment every command of this project runs in.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PGBIN="${PGUPGRADE_PGBIN:-/opt/pgbin}"
export PATH="$ROOT/.venv/bin:$PATH"
# Debian packages unpacked (<version>/usr/lib/postgresql/<major>/bin) and the wheels' copies
# (<version>/<package>/pginstall/bin), both made by install.sh.
bindirs="$(ls -d "$PGBIN"/*/usr/lib/postgresql/*/bin "$PGBIN"/*/*/pginstall/bin 2>/dev/null | paste -sd: -)"
export PGUPGRADE_BINDIRS="${PGUPGRADE_BINDIRS:-$bindirs}"
