#!/usr/bin/env bash
# The benchmark: bash bench/run.sh [--size-gb N] [--reps N] [--large] [--quick] [--only group,...]
# Rewrites docs/benchmarks.md. Needs what include/scripts/install.sh installs; installs Debian's pgcopydb if missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=include/scripts/env.sh
source "$HERE/../include/scripts/env.sh"
if ! command -v pgcopydb >/dev/null; then
    apt-get install -y pgcopydb >/dev/null || echo "bench: pgcopydb could not be installed; its figure will say why"
fi
cd "$ROOT"
exec python -m bench.run "$@"
