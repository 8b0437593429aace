"""collie's command tree, read from its argparse parser, and what is made of it.

:func:`walk` yields every command path of ``collie.cli.build_parser()``
(``()``, ``("vdi",)``, ``("vdi", "create")``, ...) with its parser, so the
bash completion (:func:`bash_completion`, printed by the hidden ``collie
--completion bash``) and the man pages (``collie.manpage``) always list
exactly the commands and options the parser accepts: a subcommand added to
the parser is completed and documented without editing anything else.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand names of ``parser`` (empty for a leaf), in order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(path, parser)`` for ``parser`` and every subcommand below it, depth first."""
    yield path, parser
    for name, sub in subcommands(parser).items():
        yield from walk(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser (``-a``, ``--address``, ...)."""
    return [s for a in parser._actions for s in a.option_strings]


def choices(parser: argparse.ArgumentParser) -> list[str]:
    """Fixed values of the positional arguments (``get set`` of ``node vnodes``)."""
    out = []
    for a in parser._actions:
        if not a.option_strings and a.choices and \
                not isinstance(a, argparse._SubParsersAction):
            out += [str(c) for c in a.choices]
    return out


def _bash_word(path: tuple[str, ...]) -> str:
    return '"' + " ".join(path) + '"'


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash script defining ``_collie`` and ``complete -F _collie collie dog``.

    The command words are completed from the tree; after the last command
    word, a word starting with ``-`` completes to the subcommand's options,
    any other word to its positional choices, or else (``-o default``) to
    file names."""
    cases = []
    for path, p in walk(parser):
        subs = list(subcommands(p))
        words = subs if subs else sorted(set(options(p)))
        extra = "" if subs else " ".join(choices(p))
        cases.append(f'        {_bash_word(path)}) cmds="{" ".join(subs)}"; '
                     f'opts="{" ".join(words) if not subs else ""}"; args="{extra}" ;;')
    known = "|".join(_bash_word(path) for path, _ in walk(parser) if path)
    return f"""\
# bash completion for collie and dog (pysheepdog), generated from collie's
# argparse parser by `collie --completion bash`: do not edit.
_collie() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" next i cmds opts args
    for ((i = 1; i < COMP_CWORD; i++)); do
        next="$path${{path:+ }}${{COMP_WORDS[i]}}"
        case "$next" in
        {known}) path=$next ;;
        *) break ;;
        esac
    done
    case "$path" in
{chr(10).join(cases)}
        *) return 0 ;;
    esac
    if [[ -n $cmds ]]; then
        COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$args" -- "$cur"))
    fi
    return 0
}}
complete -o default -F _collie collie dog
"""
