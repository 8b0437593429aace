#!/usr/bin/env bash
# Install pysheepdog and start a 3-node local cluster (ports 7000-7002,
# zones 0/1/2, data under $PYSHEEPDOG_DIR or /tmp/pysheepdog, 3 copies).
#   ./run.sh          install + start (re-running restarts stopped nodes)
#   ./run.sh stop     shut the cluster down (data is kept)
#   ./run.sh status   show which nodes run
# Options after the action go to python -m sheep.localcluster (--help lists
# them: --dir, --nodes, --base-port, --copies, -n); PYSHEEPDOG_DIR sets --dir.
set -euo pipefail
cd "$(dirname "$0")"
action=${1:-start}
[ "$action" = start ] && scripts/setup.sh run
exec .venv/bin/python -m sheep.localcluster "$action" "${@:2}"
