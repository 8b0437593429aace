#!/usr/bin/env bash
# Installs everything pysheepdog needs on a fresh Debian machine:
#   * Debian packages (listed below; apt-get only runs when one is missing),
#   * a virtualenv in .venv with the project (editable) and its Python deps.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the daemon, tests and benchmarks use (zookeeper: the
# server the zookeeper cluster driver's tests start; it pulls a Java runtime;
# qemu-utils: qemu-io, qemu-img and qemu-nbd for tests/external and bench.nbd;
# fio: the NBD benchmark client; iproute2: network namespaces of the partition tests).
APT_PACKAGES=(procps iproute2 zookeeper qemu-utils fio)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extras=${1:-}
spec=".[server${extras:+,$extras}]"  # the daemon needs the server extra; "$1" adds more (test)
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "$spec"
