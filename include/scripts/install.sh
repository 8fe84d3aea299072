#!/usr/bin/env bash
# Installs everything this project needs on Debian 12, idempotently:
#  - Debian's postgresql-15 (creates the `postgres` OS user; servers run as that user),
#  - PostgreSQL 15.18 and 15.20 binaries unpacked side by side under $PGUPGRADE_PGBIN (minor-upgrade tests),
#  - Debian's chromium + chromium-driver (the end-to-end UI test drives the Airflow UI; no browser download),
#  - Debian's openssh-server (the SSH-host test starts its own sshd on a free port; the package's own daemon is not needed),
#  - a virtualenv in .venv with the pinned requirements and this package (editable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PGBIN="${PGUPGRADE_PGBIN:-/opt/pgbin}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }; }

missing=()
for pkg in postgresql-15 postgresql-client-15 python3-venv ca-certificates chromium chromium-driver openssh-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's package starts a default cluster; this project never uses it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v n; do $SUDO pg_ctlcluster "$v" "$n" stop || true; done
fi

for v in 15.18 15.20; do
  if [ ! -x "$PGBIN/$v/usr/lib/postgresql/15/bin/pg_upgrade" ]; then
    apt_update
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq "postgresql-15=$v-0+deb12u1" "postgresql-client-15=$v-0+deb12u1" 2>/dev/null)
    $SUDO mkdir -p "$PGBIN/$v"
    for f in "$tmp"/*.deb; do $SUDO dpkg -x "$f" "$PGBIN/$v"; done
    rm -rf "$tmp"
  fi
done

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.installed-$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" -c "$ROOT/constraints.txt"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT"
  touch "$stamp"
fi
echo "install: ok (venv $ROOT/.venv, PostgreSQL 15.18/15.20 in $PGBIN)"
