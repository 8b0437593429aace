"""collie's command line: the parser of every command and dog's argument rules.

:func:`build_parser` builds the whole tree (each noun module — ``vdi``,
``node``, ``cluster`` — registers its subcommands through a
:class:`Registry`); :func:`parse_args` parses like dog, the command words
first, then options and arguments in any order (getopt_long's
permutation).  Errors are reported as dog reports them and raise
:class:`UsageExit` instead of exiting.  ``collie.__main__`` runs it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from collie import __version__, cluster, node, vdi
from collie.client import EXIT_USAGE
from collie.prog import prog_name


class UsageExit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse that reports errors like dog and never calls sys.exit."""

    def error(self, message):  # noqa: D401
        sys.stderr.write(f"{self.prog}: {message}\n")
        sys.stderr.write(f"Try '{prog_name()} --help' for more information.\n")
        raise UsageExit(EXIT_USAGE)

    def exit(self, status=0, message=None):
        if message:
            sys.stderr.write(message)
        raise UsageExit(status)


def _port(text: str) -> int:
    try:
        p = int(text, 10)
    except ValueError:
        p = -1
    if not 1 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"Invalid port number '{text}'")
    return p


def _address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if text != "localhost":
            raise argparse.ArgumentTypeError(f"Invalid ip address {text}") from None
        return "127.0.0.1"
    return text


def common_options(raw: bool = True) -> argparse.ArgumentParser:
    """The options every dog subcommand accepts (after the subcommand)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-a", "--address", type=_address, default="127.0.0.1",
                   help="specify the daemon address (default: localhost)")
    p.add_argument("-p", "--port", type=_port, default=7000,
                   help="specify the daemon port")
    if raw:
        p.add_argument("-r", "--raw", action="store_true",
                       help="raw output mode: omit headers, separate fields with "
                            "single spaces and print all sizes in decimal bytes")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print more information than default")
    return p


class Registry:
    """Helper handed to each noun module to declare its subcommands."""

    def __init__(self, subparsers):
        self.subparsers = subparsers

    def add(self, name: str, func, help: str, raw: bool = False,
            subparsers=None) -> argparse.ArgumentParser:
        sp = (subparsers or self.subparsers).add_parser(
            name, help=help, description=help, parents=[common_options(raw)])
        sp.set_defaults(func=func)
        return sp

    def group(self, name: str, help: str, subparsers=None):
        sp = (subparsers or self.subparsers).add_parser(name, help=help, description=help)
        sub = sp.add_subparsers(dest=f"{name}_cmd", metavar="<subcommand>",
                                parser_class=Parser, prog=sp.prog)
        sub.required = True
        return sp, sub


def build_parser() -> Parser:
    prog = prog_name()
    top = Parser(prog=prog, description=f"Sheepdog administrator utility (version {__version__})",
                 usage=f"{prog} <command> <subcommand> [options]",
                 epilog=f"For more information, run "
                        f"'{prog} <command> <subcommand> --help'.")
    cmds = top.add_subparsers(dest="command", metavar="<command>", parser_class=Parser,
                              prog=prog)
    cmds.required = True
    reg = Registry(cmds)
    for mod in (vdi, node, cluster):
        mod.register(reg)
    return top


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _permute(parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    """getopt_long's permutation: options (with their values) first, then
    ``--`` and the arguments in their order; after ``--`` all are arguments."""
    opts: list[str] = []
    pos: list[str] = []
    it = iter(tokens)
    for t in it:
        if t == "--":
            pos.extend(it)
            break
        if len(t) < 2 or not t.startswith("-") or parser._negative_number_matcher.match(t):
            pos.append(t)
            continue
        opts.append(t)
        name = t.split("=", 1)[0] if t.startswith("--") else t[:2]
        action = parser._option_string_actions.get(name)
        inline = "=" in t if t.startswith("--") else len(t) > 2
        if action is not None and action.nargs != 0 and not inline:
            value = next(it, None)
            if value is not None:
                opts.append(value)
    return opts + ["--"] + pos if pos else opts


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse like dog: the words naming the command (``vdi``, ``object``,
    ``map``...) come first, then options and arguments in any order, as
    getopt_long with argument permutation accepts them (``vdi read big -s s1
    0 16``); ``--`` ends the options.  Anything that does not name a known
    command is left to argparse, which reports it."""
    words: list[tuple[str, str]] = []  # (dest, chosen name) of each level
    node, i = parser, 0
    while (sub := _subparsers(node)) is not None:
        if i >= len(argv) or argv[i] not in sub.choices:
            return parser.parse_args(argv)
        words.append((sub.dest, argv[i]))
        node, i = sub.choices[argv[i]], i + 1
    args = node.parse_args(_permute(node, argv[i:]))
    for dest, name in words:
        setattr(args, dest, name)
    return args
