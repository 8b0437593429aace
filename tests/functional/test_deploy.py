"""Deployment files: systemd units, bash completion, --help and man pages.

* ``contrib/systemd/*.service`` pass ``systemd-analyze verify`` without a
  single warning (an unknown key or a bad value is only a warning there),
  and the template's ``ExecStart=``, expanded with the walkthrough's conf
  file, is the walkthrough's own ``sheep`` command line plus the pid file
  (compared as parsed configurations);
* the bash completion (``contrib/bash-completion/collie``, which evaluates
  ``collie --completion bash``) completes every command path of collie's
  parser to exactly its subcommands, and every leaf's ``-`` to its options;
* ``--help`` of every collie command path exits 0 and shows every option,
  each with a help text; so does ``sheep --help``;
* ``python -m collie.manpage`` writes pages that name every command path
  and option and that groff renders without a warning.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from walkthrough import ROOT, env_file, section, steps, unit_exec_start

from collie import __main__ as collie_main
from collie import manpage
from collie.cli_tree import options, subcommands, walk
from sheep import config

BIN = pathlib.Path(sys.executable).parent
UNITS = ROOT / "contrib" / "systemd"


def _env():
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def _tree():
    return list(walk(collie_main.build_parser()))


# -- systemd ---------------------------------------------------------------

@pytest.mark.parametrize("unit,instance", [("sheep@.service", "node1"), ("sheep.service", None)])
def test_systemd_unit_verifies(tmp_path, unit, instance):
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: scripts/setup.sh installs the 'systemd' package"
    text = (UNITS / unit).read_text()
    assert "ExecStart=/usr/local/bin/sheep " in text
    # verify checks that the program exists: point it at this checkout's sheep
    (tmp_path / unit).write_text(text.replace("/usr/local/bin/sheep", str(BIN / "sheep")))
    name = unit
    if instance:
        name = unit.replace("@", f"@{instance}")
        (tmp_path / name).symlink_to(tmp_path / unit)
    r = subprocess.run([exe, "verify", "--man=no", str(tmp_path / name)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r


def test_unit_exec_start_is_the_walkthrough_command():
    unit = (UNITS / "sheep@.service").read_text()
    conf = section("Running the nodes under systemd").split("```sh\n", 1)[1].split("```")[0]
    argv = unit_exec_start(unit, "node1", env_file(conf))
    assert argv[0] == "/usr/local/bin/sheep"
    assert argv[argv.index("-P") + 1] == "/run/pysheepdog/node1.pid"
    node1 = next(cmd for n, cmd in steps("The zmq driver") if n == 1 and cmd.startswith("sheep "))
    from_unit = dataclasses.replace(config.parse(argv[1:]), pidfile=None)
    from_doc = config.parse(shlex.split(node1)[1:])
    assert from_unit == from_doc
    # the single-node unit runs the same command line with its own pid file
    single = (UNITS / "sheep.service").read_text()
    assert unit_exec_start(single, "x", {}) == unit_exec_start(
        unit.replace("%i.pid", "sheep.pid"), "x", {})


# -- bash completion ------------------------------------------------------------

def _complete(cases: list[tuple[list[str], str]]) -> list[set[str]]:
    """COMPREPLY of ``_collie`` for each (command words, current word)."""
    script = ["source contrib/bash-completion/collie"]
    for words, cur in cases:
        arr = " ".join(shlex.quote(w) for w in ["collie", *words, cur])
        script += [f"COMP_WORDS=({arr}); COMP_CWORD={len(words) + 1}; COMPREPLY=(); _collie",
                   'echo "@@ ${COMPREPLY[*]}"']
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [set(line[3:].split()) for line in r.stdout.splitlines() if line.startswith("@@")]
    assert len(got) == len(cases), r.stdout
    return got


def test_bash_completion_of_every_command():
    cases, want = [], []
    for path, p in _tree():
        subs = subcommands(p)
        if subs:
            cases.append((list(path), ""))
            want.append(set(subs))
        else:
            cases.append((list(path), "-"))
            want.append(set(options(p)))
    got = _complete(cases)
    wrong = [(" ".join(c[0]), w, g) for c, w, g in zip(cases, want, got) if w != g]
    assert not wrong, wrong
    paths = [p for p, _ in _tree()]
    assert ("vdi", "create") in paths and ("node", "md", "plug") in paths


def test_bash_completion_prefix_and_choices():
    got = _complete([(["vdi"], "cr"), ([], "cl"), (["node", "vnodes"], ""),
                     (["vdi", "create", "-c"], "--co")])
    assert got == [{"create"}, {"cluster"}, {"get", "set"}, {"--copies"}]


def test_completion_flag_is_hidden_and_checked(capsys):
    assert collie_main.main(["--completion", "zsh"]) == 64
    assert "only 'bash'" in capsys.readouterr().err
    assert collie_main.main(["--help"]) == 0
    assert "--completion" not in capsys.readouterr().out


# -- --help and man pages --------------------------------------------------------

def test_help_of_every_command_documents_every_option(capsys):
    undocumented, missing = [], []
    for path, p in _tree():
        code = collie_main.main([*path, "--help"])
        out = capsys.readouterr().out
        assert code == 0, path
        assert out.startswith("usage: "), (path, out[:200])
        for a in p._actions:
            if not a.option_strings:
                continue
            if not (a.help or "").strip():
                undocumented.append((path, a.option_strings))
            missing += [(path, s) for s in a.option_strings if s not in out]
    assert not undocumented and not missing, (undocumented, missing)


def test_sheep_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        config.parse(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for a in config._parser()._actions:
        for s in a.option_strings:
            assert s in out, s
        if a.option_strings:
            assert (a.help or "").strip(), a.option_strings


def test_man_pages_cover_every_command_and_render(tmp_path):
    r = subprocess.run([sys.executable, "-m", "collie.manpage", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "collie.8").read_text()
    for path, p in _tree():
        if path:
            assert manpage.esc("collie " + " ".join(path)) in page, path
        for s in options(p):
            assert re.search(rf"(^|[ ,]){re.escape(manpage.esc(s))}\b", page, re.M), (path, s)
    sheep_page = (tmp_path / "sheep.8").read_text()
    for s in options(config._parser()):
        assert manpage.esc(s) in sheep_page, s
    assert (tmp_path / "dog.8").read_text() == ".so man8/collie.8\n"
    groff = shutil.which("groff")
    assert groff, "groff is missing (Debian: groff-base, which man-db needs)"
    for name in ("collie.8", "sheep.8"):
        # every warning but 'break' (a long option value that cannot be hyphenated)
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-Wbreak", "-z",
                            str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr.strip(), (name, r.stderr)
