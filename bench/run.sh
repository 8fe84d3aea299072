#!/usr/bin/env bash
# The benchmark: bash bench/run.sh [--size-gb N] [--reps N] [--large] [--quick] [--only group,...]
# Rewrites docs/benchmarks.md (keeping the section of bench/distributed.py). Needs what include/scripts/install.sh
# installs; installs Debian's pgcopydb if missing.
# Issue #14's distributed-vs-local benchmark instead: bash bench/run.sh --distributed [--size-mb N] [--reps N]
# [--events N] [--quick] [--no-doc] (python -m bench.distributed; rewrites only its own section of the doc).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=include/scripts/env.sh
source "$HERE/../include/scripts/env.sh"
cd "$ROOT"
for arg in "$@"; do
    if [[ $arg == --distributed ]]; then
        rest=()
        for a in "$@"; do [[ $a == --distributed ]] || rest+=("$a"); done
        exec python -m bench.distributed "${rest[@]}"
    fi
done
if ! command -v pgcopydb >/dev/null; then
    apt-get install -y pgcopydb >/dev/null || echo "bench: pgcopydb could not be installed; its figure will say why"
fi
section="$(mktemp)"
trap 'rm -f "$section"' EXIT
python -m bench.distributed --save-section "$section" || : >"$section"
rc=0
python -m bench.run "$@" || rc=$?
python -m bench.distributed --restore-section "$section" || echo "bench: could not restore the distributed section"
exit "$rc"
