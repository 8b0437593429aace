"""The server's Python dependencies, checked before a daemon starts.

pysheepdog's base install is the client only (``qemu_client``, which needs
nothing outside the standard library); the daemon needs the ``server``
extra.  :func:`missing_server_packages` names what a ``sheep`` started from
a client-only install lacks, so that it can say so instead of dying on an
ImportError deep inside the store.  Imports nothing but the standard library.
"""

from __future__ import annotations

import importlib.util

#: import name -> distribution name of what every daemon needs
REQUIRED = {"numpy": "numpy", "crcmod": "crcmod", "crc32c": "crc32c",
            "prometheus_client": "prometheus-client"}
#: cluster driver -> the (import name, distribution name) it needs besides
DRIVER_DEPS = {"zmq": ("zmq", "pyzmq"), "zookeeper": ("kazoo", "kazoo")}

INSTALL_HINT = ("install the server extras: pip install 'pysheepdog[server]' "
                "(from a source checkout: pip install -e '.[server]')")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_server_packages(cluster_driver: str = "local") -> list[str]:
    """Distribution names of the packages the daemon needs that are not installed."""
    need = dict(REQUIRED)
    extra = DRIVER_DEPS.get(cluster_driver.split(":", 1)[0])
    if extra:
        need[extra[0]] = extra[1]
    return [dist for mod, dist in need.items() if not _importable(mod)]


def missing_message(missing: list[str]) -> str:
    """The one-line error ``sheep`` prints for :func:`missing_server_packages`."""
    what = ", ".join(missing)
    noun = "package" if len(missing) == 1 else "packages"
    return (f"sheep: the daemon needs the Python {noun} {what}, not installed; "
            f"{INSTALL_HINT}")
