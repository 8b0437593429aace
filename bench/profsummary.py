"""Summarise py-spy collapsed stacks (``python -m bench --profile DIR``).

``python -m bench.profsummary DIR/<workload>-sheep*.txt [--top N]`` prints the
functions with the most samples, self (the frame on top of the stack) and
inclusive (anywhere on the stack), as a share of all samples.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_LINE = re.compile(r"^(.*) (\d+)$")
_LINENO = re.compile(r":\d+\)$")


def load(paths):
    stacks = collections.Counter()
    for p in paths:
        with open(p) as f:
            for line in f:
                m = _LINE.match(line.rstrip("\n"))
                if m:
                    frames = tuple(_LINENO.sub(")", fr) for fr in m.group(1).split(";"))
                    stacks[frames] += int(m.group(2))
    return stacks


def summarise(stacks, top: int = 25) -> str:
    total = sum(stacks.values()) or 1
    self_c, incl = collections.Counter(), collections.Counter()
    for frames, n in stacks.items():
        self_c[frames[-1]] += n
        for fr in set(frames):
            incl[fr] += n
    out = [f"{total} samples", "", "self %   function"]
    out += [f"{100 * n / total:6.1f}   {fr}" for fr, n in self_c.most_common(top)]
    out += ["", "incl %   function"]
    out += [f"{100 * n / total:6.1f}   {fr}" for fr, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profsummary", description=__doc__)
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=25)
    ns = p.parse_args(argv)
    print(summarise(load(ns.files), ns.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
