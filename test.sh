#!/usr/bin/env bash
# Install pysheepdog with its test dependencies and run the test suite.
# Extra arguments go to pytest (e.g. ./test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
