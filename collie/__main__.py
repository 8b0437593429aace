"""collie (alias dog): the Sheepdog administration CLI.

Usage mirrors Sheepdog 1.0's ``dog <command> <subcommand> [options] args``;
the common options (-a/--address, -p/--port, -r/--raw where dog has it,
-v/--verbose, -h/--help) and the subcommand's own options may come anywhere
after the command words, between or after the arguments (getopt_long's
permutation, see :func:`parse_args`).  ``main(argv)``
returns the exit status (0 success, 1 failure, 2 system failure, 3 exists,
5 missing, 64 usage) instead of exiting, so tests can call it directly.
"""

from __future__ import annotations

import sys

from collie import __version__
from collie.cli import UsageExit, build_parser, parse_args  # noqa: F401  (tests use them here)
from collie.cli_tree import bash_completion
from collie.client import EXIT_USAGE, Client, CollieError
from collie.output import Out
from collie.prog import prog_name


def _completion(rest: list[str]) -> int:
    """``collie --completion bash``: print the bash completion script
    generated from the parser (collie/cli_tree.py)."""
    if rest != ["bash"]:
        sys.stderr.write(f"{prog_name()}: --completion: only 'bash' is supported\n")
        return EXIT_USAGE
    sys.stdout.write(bash_completion(build_parser()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:  # 1.0's dog only shows it in --help; see docs/
        sys.stdout.write(f"Sheepdog administrator utility (version {__version__})\n")
        return 0
    if argv[:1] == ["--completion"]:  # hidden: contrib/bash-completion/collie calls it
        return _completion(argv[1:])
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except UsageExit as e:
        return e.code
    out = Out(raw=getattr(args, "raw", False))
    client = Client(args.address, args.port)
    try:
        ret = args.func(args, client, out)
    except CollieError as e:
        for m in e.messages:
            out.err(m)
        ret = e.code
    except UsageExit as e:
        ret = e.code
    except KeyboardInterrupt:
        ret = 130
    except BrokenPipeError:
        ret = 0
    finally:
        client.close()
        try:
            out.stdout.flush()
        except (OSError, ValueError):
            pass
    return int(ret or 0)


if __name__ == "__main__":
    sys.exit(main())
