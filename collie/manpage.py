"""Man pages for ``collie`` (also ``dog``) and ``sheep``, made from their parsers.

``python -m collie.manpage DIR`` writes ``DIR/collie.8``, ``DIR/dog.8`` (a
``.so`` link to collie.8) and ``DIR/sheep.8``; ``man -l DIR/collie.8``
shows one.  Every command path of collie's parser (``collie.cli_tree.walk``)
gets a subsection with its usage line, description and every option with
its ``--help`` text; sheep's page lists every option of ``sheep.config``'s
parser.  Nothing is written by hand here, so the pages cannot drift from
``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys

from collie import __version__
from collie.cli import build_parser
from collie.cli_tree import subcommands, walk
from sheep.config import _parser as sheep_parser

SEE_ALSO = ("docs/multi-host.md and docs/deployment.md in the pysheepdog sources; "
            "the README for the cluster drivers and the data-safety guarantees.")


def esc(text: str) -> str:
    """Text for a troff line: backslashes and dashes escaped, no leading dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _options(p: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        if a.nargs == 0:
            label = ", ".join(a.option_strings)
        else:
            metavar = a.metavar or a.dest.upper()
            label = ", ".join(f"{s} {metavar}" for s in a.option_strings)
        out += [".TP", f".B {esc(label)}", esc(_help(a, p))]
    return out


def _help(a: argparse.Action, p: argparse.ArgumentParser) -> str:
    """The option's help text as ``--help`` prints it (``%(default)s`` expanded)."""
    text = " ".join((a.help or "").split())
    if "%(" in text:
        try:
            text = text % {**vars(a), "prog": p.prog}
        except (KeyError, TypeError, ValueError):
            pass
    return text


def _usage(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_usage().replace("usage:", "", 1).split())


def _header(name: str, summary: str) -> list[str]:
    return [f'.TH {name.upper()} 8 "" "pysheepdog {__version__}" "System Administration"',
            ".SH NAME", f"{esc(name)} \\- {esc(summary)}"]


def collie_page(parser: argparse.ArgumentParser) -> str:
    lines = _header("collie", "Sheepdog administrator utility (also installed as dog)")
    lines += [".SH SYNOPSIS", ".B collie", "\\fIcommand\\fR \\fIsubcommand\\fR [\\fIoptions\\fR]",
              ".SH DESCRIPTION",
              esc("collie administers a pysheepdog (Sheepdog 1.0 compatible) cluster "
                  "through any of its sheep daemons (-a ADDRESS -p PORT, default "
                  "127.0.0.1:7000). Options may come anywhere after the command words; "
                  "-- ends them. Exit status: 0 success, 1 failure, 2 system failure, "
                  "3 exists, 5 missing, 64 usage."),
              ".SH COMMANDS"]
    for path, p in walk(parser):
        if not path:
            continue
        if subcommands(p):
            lines += [f'.SS "{esc("collie " + " ".join(path))}"', esc(p.description or ""),
                      ".PP", esc("Subcommands: " + ", ".join(subcommands(p)) + ".")]
            continue
        lines += [f'.SS "{esc("collie " + " ".join(path))}"', esc(p.description or ""),
                  ".PP", f".B {esc(_usage(p))}"]
        lines += _options(p)
    lines += [".SH SEE ALSO", ".BR sheep (8);", esc(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def sheep_page(parser: argparse.ArgumentParser) -> str:
    lines = _header("sheep", "pysheepdog storage daemon")
    lines += [".SH SYNOPSIS", f".B {esc(_usage(parser))}", ".SH DESCRIPTION",
              esc(" ".join((parser.description or "").split())), ".SH OPTIONS"]
    lines += _options(parser)
    lines += [".SH EXAMPLE", esc(parser.epilog or ""),
              ".SH SEE ALSO", ".BR collie (8);", esc(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def write_all(outdir: str) -> list[str]:
    """Write the pages into ``outdir`` (created); return their paths."""
    os.makedirs(outdir, exist_ok=True)
    pages = {"collie.8": collie_page(build_parser()), "dog.8": ".so man8/collie.8\n",
             "sheep.8": sheep_page(sheep_parser())}
    paths = []
    for name, text in pages.items():
        path = os.path.join(outdir, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python -m collie.manpage OUTDIR  (writes collie.8, dog.8, "
                         "sheep.8)\n")
        return 64
    for path in write_all(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
