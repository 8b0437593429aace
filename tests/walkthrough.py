"""The command lines of docs/multi-host.md and of contrib/systemd, for tests.

:func:`steps` reads one section of the walkthrough (``## The zmq driver``,
``## The ZooKeeper driver``) and returns its ``nodeN$ CMD`` lines from the
``sh`` blocks, in order, as ``(N, CMD)``.  :func:`localize` maps the
walkthrough's example addresses, ZooKeeper port and store directory to a
test's own (``10.0.0.N`` -> node ``N``'s namespace address, ``10.0.0.10`` ->
the ZooKeeper host, ``/var/lib/pysheepdog`` -> node ``N``'s directory): the
rest of each line is run as written.

:func:`unit_exec_start` expands a unit file's ``ExecStart=`` the way
systemd does for our units: the specifiers ``%i``/``%I``/``%%``, then
``${VAR}`` (one word, possibly empty) and ``$VAR`` (split on whitespace,
no word when empty) from an ``EnvironmentFile``'s ``KEY=VALUE`` lines.
"""

from __future__ import annotations

import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "multi-host.md"
DOC_STORE = "/var/lib/pysheepdog"
_LINE = re.compile(r"^node(\d+)\$ (.+)$")


def section(title: str, text: str | None = None) -> str:
    text = DOC.read_text() if text is None else text
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def steps(title: str) -> list[tuple[int, str]]:
    """``(node number, command)`` of every ``nodeN$`` line of the section."""
    out, in_sh = [], False
    for line in section(title).splitlines():
        if line.startswith("```"):
            in_sh = line.strip() == "```sh" and not in_sh
            continue
        m = _LINE.match(line) if in_sh else None
        if m:
            out.append((int(m[1]), m[2]))
    return out


def localize(cmd: str, node: int, addr, zk_host: str | None = None,
             zk_port: int | None = None, store=None) -> str:
    """``cmd`` with the example addresses, ZooKeeper port and store replaced:
    ``addr(N)`` for 10.0.0.N, ``zk_host`` for 10.0.0.10, ``zk_port`` for
    2181, ``store(node)`` for /var/lib/pysheepdog."""
    def host(m):
        n = int(m[1])
        return zk_host if n == 10 and zk_host else addr(n)
    cmd = re.sub(r"\b10\.0\.0\.(\d+)\b", host, cmd)
    if zk_port is not None:
        cmd = cmd.replace(":2181", f":{zk_port}")
    if store is not None:
        cmd = cmd.replace(DOC_STORE, str(store(node)))
    return cmd


def env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional double quotes)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        env[k.strip()] = v
    return env


def unit_setting(unit_text: str, key: str) -> str:
    found = [line.split("=", 1)[1] for line in unit_text.splitlines()
             if line.startswith(key + "=")]
    assert len(found) == 1, f"{key}= must appear once, found {found}"
    return found[0]


def unit_exec_start(unit_text: str, instance: str, env: dict[str, str]) -> list[str]:
    """The argv systemd runs for ``ExecStart=`` (see the module docstring)."""
    line = unit_setting(unit_text, "ExecStart")
    line = line.replace("%%", "\0").replace("%i", instance).replace("%I", instance)
    assert "%" not in line.replace("\0", ""), f"unexpected specifier in {line!r}"
    argv = []
    for word in shlex.split(line.replace("\0", "%")):
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", word)
        if m and m[1]:
            argv.append(env.get(m[1], ""))
        elif m:
            argv.extend(env.get(m[2], "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda x: env.get(x[1], ""), word))
    return argv
