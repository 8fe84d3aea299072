#!/usr/bin/env bash
# Pre-upgrade checks of one PostgreSQL cluster, standalone (bash, psql, df, find; no Airflow, no Python).
# Run it on the database host before any PostgreSQL or extension upgrade; the DAGs run the same checks as tasks.
#
# Connection: the usual libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE; the password only through
# PGPASSWORD or ~/.pgpass / PGPASSFILE — psql never prompts, -w). PGDATABASE is the database connected to first;
# the extension checks then run in EVERY database that accepts connections and has the extension installed
# (an upgrade moves the whole cluster, so a full queue in any database matters).
#
# Checks (each prints OK:, WARN: or FAIL:):
#   server reachable and not in recovery (the upgrade runs on the primary); size of every database;
#   per database with the extension: version, number of TVIEWs (metadata rows), metadata rows with an error,
#   queue empty; free space on the filesystems of the data directory and of the backup directory (df -P on
#   those paths, never /); the backup (--backup) exists, is not empty and is not older than --max-backup-age-hours.
#
# Exit codes: 0 ready, 1 at least one check failed (each failure printed as "FAIL: ..."), 2 usage error.
set -euo pipefail

PROG="$(basename "$0")"

usage() {
  cat <<EOF
usage: $PROG --backup PATH [options]

  --backup PATH               newest backup file or directory (pg_dump -Fd) to check (required)
  --max-backup-age-hours N    the backup must be younger than N hours (default 24)
  --data-dir DIR              data directory for the disk-space check (default: the server's data_directory)
  --backup-dir DIR            backup filesystem for the disk-space check (default: the directory holding --backup)
  --min-free-gb N             free GiB required on each of those filesystems
                              (default: the total size of all databases, enough for one more copy)
  --extension NAME            extension whose state is checked (default pg_tviews)
  --queue-function NAME       set-returning function listing pending changes (default pg_tviews_get_queue)
  --metadata-table NAME       one row per TVIEW (default pg_tviews_metadata)
  --error-column NAME         metadata column holding the last error (default last_error)
  --psql PATH                 psql to use (default: psql from PATH)
  -h, --help                  this text

Connection through PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD / ~/.pgpass.
Exit codes: 0 ready, 1 a check failed, 2 usage error.
EOF
}

usage_error() {
  echo "$PROG: $*" >&2
  echo "Try '$PROG --help'." >&2
  exit 2
}

BACKUP=""
MAX_AGE_HOURS=24
DATA_DIR=""
BACKUP_DIR=""
MIN_FREE_GB=""
EXTENSION="pg_tviews"
QUEUE_FUNCTION="pg_tviews_get_queue"
METADATA_TABLE="pg_tviews_metadata"
ERROR_COLUMN="last_error"
PSQL="psql"

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    usage_error "option $1 needs a value"
  fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --backup) need_value "$@"; BACKUP="$2"; shift 2 ;;
    --max-backup-age-hours) need_value "$@"; MAX_AGE_HOURS="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --backup-dir) need_value "$@"; BACKUP_DIR="$2"; shift 2 ;;
    --min-free-gb) need_value "$@"; MIN_FREE_GB="$2"; shift 2 ;;
    --extension) need_value "$@"; EXTENSION="$2"; shift 2 ;;
    --queue-function) need_value "$@"; QUEUE_FUNCTION="$2"; shift 2 ;;
    --metadata-table) need_value "$@"; METADATA_TABLE="$2"; shift 2 ;;
    --error-column) need_value "$@"; ERROR_COLUMN="$2"; shift 2 ;;
    --psql) need_value "$@"; PSQL="$2"; shift 2 ;;
    --backup=* | --max-backup-age-hours=* | --data-dir=* | --backup-dir=* | --min-free-gb=* | --extension=* | \
      --queue-function=* | --metadata-table=* | --error-column=* | --psql=*)
      opt="${1%%=*}"
      set -- "$opt" "${1#*=}" "${@:2}"
      ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

[ -n "$BACKUP" ] || usage_error "--backup PATH is required (the newest backup file or directory)"
if ! [[ "$MAX_AGE_HOURS" =~ ^[1-9][0-9]*$ ]]; then
  usage_error "--max-backup-age-hours must be a positive whole number, got '$MAX_AGE_HOURS'"
fi
[ -z "$MIN_FREE_GB" ] || [[ "$MIN_FREE_GB" =~ ^[0-9]+$ ]] ||
  usage_error "--min-free-gb must be a whole number, got '$MIN_FREE_GB'"
command -v "$PSQL" >/dev/null 2>&1 || usage_error "psql not found: '$PSQL' (use --psql PATH)"

export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
FAILED=()

ok() { echo "OK:   $*"; }
warn() { echo "WARN: $*"; }
fail() {
  echo "FAIL: $*"
  FAILED+=("$*")
}

# sql DATABASE: runs the SQL read from stdin in DATABASE (empty: the PGDATABASE default) and prints the rows,
# unaligned, without headers. The SQL comes from stdin so that psql interpolates the names: :'extname' is a
# quoted literal, :"queue_function" etc. quoted identifiers — no name is ever pasted into SQL text here.
sql() {
  local args=(-X -A -t -q -w -v ON_ERROR_STOP=1 -v "extname=$EXTENSION" -v "queue_function=$QUEUE_FUNCTION"
    -v "metadata_table=$METADATA_TABLE" -v "error_column=$ERROR_COLUMN" -f -)
  if [ -n "$1" ]; then
    # PGDATABASE, not -d: a name given to -d that contains '=' would be read as a connection string
    PGDATABASE="$1" "$PSQL" "${args[@]}"
  else
    "$PSQL" "${args[@]}"
  fi
}

one_line() { tr '\n' ' ' | sed -e 's/[[:space:]]*$//'; }

echo "=== Pre-upgrade checks ($(date -u '+%Y-%m-%d %H:%M:%S UTC')) ==="

# -- 1. the server ---------------------------------------------------------------------------------------------
SERVER_UP=1
if info="$(sql "" 2>&1 <<'SQL'
SELECT current_setting('server_version') || '|' || pg_is_in_recovery()::text || '|' || current_database();
SQL
)"; then
  IFS='|' read -r server_version in_recovery first_db <<<"$info"
  ok "server reachable: PostgreSQL $server_version (connected to database $first_db)"
  if [ "$in_recovery" = "true" ]; then
    fail "server is in recovery (a standby): run the upgrade checks on the primary"
  else
    ok "server is a primary (not in recovery)"
  fi
else
  SERVER_UP=0
  fail "server not reachable: $(one_line <<<"$info")"
fi

# -- 2. databases and the extension ------------------------------------------------------------------------------
TOTAL_BYTES=0
if [ "$SERVER_UP" -eq 1 ]; then
  if listing="$(sql "" 2>&1 <<'SQL'
SELECT pg_database_size(oid) || '|' || pg_size_pretty(pg_database_size(oid)) || '|' || datname
FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname;
SQL
  )"; then
    DATABASES=()
    while IFS='|' read -r bytes pretty name; do
      [ -n "$name" ] || continue
      DATABASES+=("$name")
      TOTAL_BYTES=$((TOTAL_BYTES + bytes))
      ok "database $name: $pretty"
    done <<<"$listing"
  else
    DATABASES=()
    fail "cannot list databases: $(one_line <<<"$listing")"
  fi

  WITH_EXT=0
  for db in "${DATABASES[@]}"; do
    if ! version="$(sql "$db" 2>&1 <<'SQL'
SELECT extversion FROM pg_extension WHERE extname = :'extname';
SQL
    )"; then
      fail "$db: cannot read pg_extension: $(one_line <<<"$version")"
      continue
    fi
    [ -n "$version" ] || continue
    WITH_EXT=$((WITH_EXT + 1))
    ok "$db: extension $EXTENSION $version installed"

    if count="$(sql "$db" 2>&1 <<'SQL'
SELECT count(*) || '|' || count(*) FILTER (WHERE :"error_column" IS NOT NULL) FROM :"metadata_table";
SQL
    )"; then
      IFS='|' read -r tviews errors <<<"$count"
      ok "$db: $tviews TVIEWs ($METADATA_TABLE rows)"
      if [ "$errors" = "0" ]; then
        ok "$db: no metadata errors"
      else
        fail "$db: metadata errors ($errors TVIEWs have $ERROR_COLUMN set)"
      fi
    else
      fail "$db: metadata table $METADATA_TABLE not readable: $(one_line <<<"$count")"
    fi

    if queue="$(sql "$db" 2>&1 <<'SQL'
SELECT count(*) FROM :"queue_function"();
SQL
    )"; then
      if [ "$queue" = "0" ]; then
        ok "$db: queue empty"
      else
        fail "$db: queue not empty ($queue entries): let it drain before the upgrade"
      fi
    else
      fail "$db: queue not readable with $QUEUE_FUNCTION(): $(one_line <<<"$queue")"
    fi
  done
  if [ "${#DATABASES[@]}" -gt 0 ] && [ "$WITH_EXT" -eq 0 ]; then
    warn "extension $EXTENSION is installed in no database (no queue or metadata to check; may be normal)"
  fi
fi

# -- 3. disk space -------------------------------------------------------------------------------------------------
if [ -z "$DATA_DIR" ] && [ "$SERVER_UP" -eq 1 ]; then
  if ! DATA_DIR="$(sql "" 2>&1 <<<'SHOW data_directory;')"; then
    fail "cannot ask the server for data_directory ($(one_line <<<"$DATA_DIR")): pass --data-dir DIR"
    DATA_DIR=""
  fi
fi
[ -n "$BACKUP_DIR" ] || BACKUP_DIR="$(dirname -- "$BACKUP")"

if [ -n "$MIN_FREE_GB" ]; then
  NEED_KB=$((MIN_FREE_GB * 1024 * 1024))
  NEED_LABEL="$MIN_FREE_GB GiB (--min-free-gb)"
else
  NEED_KB=$(((TOTAL_BYTES + 1023) / 1024))
  NEED_LABEL="$((NEED_KB / 1024)) MiB (total size of all databases)"
fi

# free_kb PATH: free KiB on the filesystem that holds PATH (POSIX df output: one line per filesystem)
free_kb() { df -P -k -- "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }

check_space() {
  local label="$1" dir="$2" free
  if [ ! -d "$dir" ]; then
    fail "$label directory $dir does not exist on this host (run on the database host or pass the option)"
    return
  fi
  free="$(free_kb "$dir")"
  if ! [[ "$free" =~ ^[0-9]+$ ]]; then
    fail "cannot measure free space of $label directory $dir (df -P)"
  elif [ "$free" -lt "$NEED_KB" ]; then
    fail "not enough free space for $label: $((free / 1024)) MiB free on the filesystem of $dir, need $NEED_LABEL"
  else
    ok "free space for $label: $((free / 1024)) MiB on the filesystem of $dir (need $NEED_LABEL)"
  fi
}

if [ -n "$DATA_DIR" ]; then
  check_space "data" "$DATA_DIR"
elif [ "$SERVER_UP" -eq 0 ]; then
  fail "free space of the data directory not checked: server not reachable and no --data-dir"
fi
check_space "backup" "$BACKUP_DIR"

# -- 4. the backup -------------------------------------------------------------------------------------------------
if [ ! -e "$BACKUP" ]; then
  fail "backup missing ($BACKUP does not exist): MUST BACKUP BEFORE UPGRADE"
else
  # newest modification time: the file itself, or the newest file in a directory backup (pg_dump -Fd)
  newest="$(find "$BACKUP" -type f -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)"
  if [ -z "$newest" ] || [ -z "$(find "$BACKUP" -type f -size +0c -print -quit 2>/dev/null)" ]; then
    fail "backup empty ($BACKUP has no non-empty file)"
  else
    age_s=$(($(date +%s) - ${newest%.*}))
    age_h=$((age_s / 3600))
    if [ "$age_s" -gt $((MAX_AGE_HOURS * 3600)) ]; then
      fail "backup too old ($BACKUP: ${age_h} h old, at most $MAX_AGE_HOURS h allowed)"
    else
      ok "backup $BACKUP: $(du -sh -- "$BACKUP" 2>/dev/null | cut -f1), ${age_h} h old (at most $MAX_AGE_HOURS h)"
    fi
  fi
fi

# -- summary -------------------------------------------------------------------------------------------------------
echo
if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "READY: all checks passed"
  exit 0
fi
echo "NOT READY: ${#FAILED[@]} check(s) failed:"
printf '  - %s\n' "${FAILED[@]}"
exit 1
