#!/usr/bin/env bash
# Installs what one pysheepdog command needs on a fresh Debian machine:
#   * the Debian packages of that command (apt-get only runs when one is missing),
#   * python3-venv when `python3 -m venv` cannot work (Debian ships venv's
#     ensurepip separately),
#   * a virtualenv in .venv with the project (editable) and its Python deps.
#
# Usage: scripts/setup.sh [MODE] [EXTRAS]
#   MODE    run    what ./run.sh needs: the daemon, collie, qemu_client (default)
#           test   what ./test.sh needs: also ZooKeeper (Java), qemu-utils, fio, iproute2
#           bench  what `python -m bench*` needs: also qemu-utils and fio
#           all    everything of test and bench
#   EXTRAS  more setup.cfg extras to install, comma separated (e.g. bench)
#
# Environment:
#   SETUP_DRY_RUN=1       change nothing; print the apt packages the mode needs
#                         ("apt-packages: ..."), the ones missing ("apt-missing: ..."),
#                         whether a venv is created ("venv: ...") and the pip spec
#                         ("pip-spec: ...")
#   SETUP_VENV_MISSING=1  act as if `python3 -m venv` did not work (tests use it)
#   PYTHON=python3.11     the interpreter the virtualenv is made from (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=${1:-run}
MORE_EXTRAS=${2:-}
case "$MODE" in
    run|test|bench|all) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "scripts/setup.sh: unknown mode '$MODE' (run, test, bench or all)" >&2
       usage >&2; exit 2 ;;
esac

# Debian packages per mode.
#   procps:     ps/kill/pgrep, used by ./run.sh users and the tests' process checks;
#   zookeeper:  the server the zookeeper cluster driver's tests start (pulls a Java runtime);
#   qemu-utils: qemu-io, qemu-img, qemu-nbd for tests/external and bench.nbd;
#   fio:        the NBD benchmark client;
#   iproute2:   network namespaces of the partition probes and multi-host tests (`ip netns`);
#   systemd:    systemd-analyze, which checks contrib/systemd;
#   groff-base: renders the generated man pages.
RUN_PACKAGES=(procps)
TEST_PACKAGES=(procps iproute2 zookeeper qemu-utils fio systemd groff-base)
BENCH_PACKAGES=(procps qemu-utils fio)

# ---- pip extras of each mode (setup.cfg [options.extras_require]): THE ONE LINE TO CHANGE ----
declare -A PIP_EXTRAS=([run]="server" [test]="server,test" [bench]="server,bench" [all]="server,test,bench")
# ------------------------------------------------------------------------------------------

case "$MODE" in
    run) APT_PACKAGES=("${RUN_PACKAGES[@]}") ;;
    test) APT_PACKAGES=("${TEST_PACKAGES[@]}") ;;
    bench) APT_PACKAGES=("${BENCH_PACKAGES[@]}") ;;
    all) APT_PACKAGES=("${TEST_PACKAGES[@]}") ;;
esac

PY=${PYTHON:-python3}
need_venv=0
[ -x .venv/bin/python ] || need_venv=1

venv_works() {
    [ -z "${SETUP_VENV_MISSING:-}" ] || return 1
    # Debian's python3 has the venv module but not ensurepip, without which
    # `python3 -m venv` fails ("ensurepip is not available").
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1
}
if [ -n "${SETUP_VENV_MISSING:-}" ] || { [ "$need_venv" = 1 ] && ! venv_works; }; then
    APT_PACKAGES+=(python3-venv)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ -z "${SETUP_VENV_MISSING:-}" ] || case " ${missing[*]} " in
    *" python3-venv "*) ;; *) missing+=(python3-venv) ;; esac

extras=${PIP_EXTRAS[$MODE]}
if [ -n "$MORE_EXTRAS" ]; then
    extras=${extras:+$extras,}$MORE_EXTRAS
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"

if [ -n "${SETUP_DRY_RUN:-}" ]; then
    echo "mode: $MODE"
    echo "apt-packages: ${APT_PACKAGES[*]}"
    echo "apt-missing: ${missing[*]}"
    echo "venv: $([ "$need_venv" = 1 ] && echo "create .venv with $PY" || echo "keep .venv")"
    echo "pip-spec: $spec"
    exit 0
fi

if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

if [ "$need_venv" = 1 ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "$spec"
