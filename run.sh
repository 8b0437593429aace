#!/usr/bin/env bash
# Install pysheepdog and start a 3-node local cluster (ports 7000-7002,
# zones 0/1/2, data under $PYSHEEPDOG_DIR or /tmp/pysheepdog, 3 copies).
#   ./run.sh [start] [OPTIONS]   install (scripts/setup.sh run) + start; re-running
#                                restarts stopped nodes on their data
#   ./run.sh stop [OPTIONS]      shut the cluster down (data is kept)
#   ./run.sh status [OPTIONS]    show which nodes run
# OPTIONS (python -m sheep.launcher): --dir DIR (default $PYSHEEPDOG_DIR or
# /tmp/pysheepdog), --nodes N (3), --base-port PORT (7000), --copies N (3, used
# when formatting), -n (daemons without fdatasync). Give stop/status the same
# --dir, --nodes and --base-port as start.
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-start}" in
    start|stop|status) action=${1:-start}; [ $# -gt 0 ] && shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) action=start ;;
    *) echo "run.sh: unknown action '$1' (start, stop or status; --help)" >&2; exit 2 ;;
esac
if [ "$action" = start ]; then
    scripts/setup.sh run
elif [ ! -x .venv/bin/python ]; then
    echo "run.sh: nothing installed yet; start a cluster with ./run.sh first" >&2; exit 1
fi
exec .venv/bin/python -m sheep.launcher "$action" "$@"
