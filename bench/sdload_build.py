"""Build the C load client ``bench/sdload.c`` once into a cache directory.

The binary lives in ``$XDG_CACHE_HOME/pysheepdog`` (``~/.cache/pysheepdog``
when unset) as ``sdload-<hash>``, where the hash covers the source and the
compiler flags: a changed ``sdload.c`` (or flags) gets a new binary, the old
ones are removed.  The compiler is ``$CC`` if set, else ``cc``, else ``gcc``;
without one :func:`build` raises :class:`BuildError` saying so (``python -m
bench.sdload`` then exits with status 3 and suggests ``--client python``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile

SOURCE = pathlib.Path(__file__).resolve().with_name("sdload.c")
CFLAGS = ("-O2", "-Wall", "-pthread")


class BuildError(RuntimeError):
    """sdload cannot be built: no C compiler, or the compiler failed."""


def cache_dir(env=None) -> pathlib.Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "pysheepdog"


def find_compiler(env=None) -> list[str] | None:
    """The compiler command (``$CC`` split like a shell would, else cc, else
    gcc), or None when none is on PATH."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    if env.get("CC"):
        cmd = shlex.split(env["CC"])
        exe = shutil.which(cmd[0], path=path)
        return [exe, *cmd[1:]] if exe else None
    for name in ("cc", "gcc"):
        exe = shutil.which(name, path=path)
        if exe:
            return [exe]
    return None


def source_hash(source: pathlib.Path = SOURCE) -> str:
    h = hashlib.sha256(source.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def build(source: pathlib.Path = SOURCE, cache: pathlib.Path | None = None, env=None,
          log=None) -> pathlib.Path:
    """The path of an up-to-date sdload binary, compiling it if needed."""
    cache = cache_dir(env) if cache is None else pathlib.Path(cache)
    try:
        digest = source_hash(source)
    except OSError as e:
        raise BuildError(f"cannot read the sdload source {source}: {e} (is bench/sdload.c "
                         f"in the installed package?)") from e
    binary = cache / f"sdload-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cc = find_compiler(env)
    if cc is None:
        raise BuildError("no C compiler found (looked for $CC, cc, gcc on PATH): install one "
                         "(e.g. apt-get install gcc) or run with --client python")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sdload-", dir=cache)
    os.close(fd)
    cmd = [*cc, *CFLAGS, "-o", tmp, str(source)]
    if log:
        log(f"building sdload: {' '.join(cmd)}")
    try:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BuildError(f"running the compiler {cc[0]} failed: {e}") from e
        if r.returncode != 0:
            raise BuildError(f"compiling {source} failed (exit {r.returncode}):\n"
                             f"{(r.stderr or r.stdout).strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)  # atomic: a concurrent run sees the old state or this one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in cache.glob("sdload-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary
