"""``python -m bench.membership``: membership-driver figures: how fast each cluster
driver forms a cluster and detects a failure.

For each driver (default: local and zmq) it measures, with real member
processes (``tests/unit/cluster/member_proc.py``):

* formation: 10 members started at once, from the first spawn until every
  one of them delivered the 10-member view (includes Python start-up);
* failure: in a 5-member cluster, a non-master member is killed with
  SIGKILL; the time until every survivor delivered the view without it
  (a replacement joins before the next round); median of ``--rounds``;
* master failure: the same with the master (median of ``--rounds``).

Unlike the other benchmarks it needs a checkout (its member processes are
the drivers' test programs under tests/unit/cluster); elsewhere it exits 1
saying so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The member processes are the cluster drivers' test programs: this one
# benchmark needs a checkout (the others run from an installed package).
_DRIVERS = Path(__file__).resolve().parent.parent / "tests" / "unit" / "cluster"
sys.path.insert(0, str(_DRIVERS))
try:
    from drivers import DRIVERS, Proc
except ImportError as e:
    if e.name != "drivers":
        raise
    sys.exit(f"python -m bench.membership runs the member processes of the repository's "
             f"tests/unit/cluster, not found at {_DRIVERS}: run it from a checkout")


def formation(spec, n=10) -> float:
    t0 = time.monotonic()
    procs = [Proc(spec(i), f"F{i}") for i in range(n)]
    try:
        for p in procs:
            p.wait(lambda ev: any(e["ev"] in ("join", "leave") and len(e["members"]) == n
                                  for e in ev), 60, "full view")
        return time.monotonic() - t0
    finally:
        for p in procs:
            p.stop()


def failures(spec, rounds: int, master: bool) -> list[float]:
    procs, out, k, tag = [], [], 0, "B" if master else "K"
    try:
        for i in range(5):
            procs.append(Proc(spec(i), f"{tag}{k}"))
            k += 1
            procs[-1].wait_joined(30)
        for _ in range(rounds):
            idents = {p.ident for p in procs}

            def settled(ev):  # this member's latest view is exactly the live members
                views = [e["members"] for e in ev if e["ev"] in ("join", "leave")]
                return bool(views) and set(views[-1]) == idents
            for p in procs:
                p.wait(settled, 30, "stable view")
            view = procs[0].views()[-1]
            victim = next(p for p in procs if p.ident == (view[0] if master else view[-1]))
            t0 = time.monotonic()
            victim.kill()
            procs.remove(victim)
            rest = [i for i in view if i != victim.ident]
            for p in procs:
                p.wait(p.sees(rest), 20, "new view")
            out.append(time.monotonic() - t0)
            victim.stop()
            procs.append(Proc(spec(k), f"{tag}{k}"))
            k += 1
            procs[-1].wait_joined(30)
        return out
    finally:
        for p in procs:
            p.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.membership", description=__doc__.split("\n\n")[0])
    ap.add_argument("drivers", nargs="*", default=["local", "zmq"])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    print("| driver | 10-member formation (s) | SIGKILL member -> new view, median (s) "
          "| SIGKILL master -> new view, median (s) |")
    print("|---|---|---|---|")
    for name in args.drivers:
        with tempfile.TemporaryDirectory() as tmp:
            spec, cleanup = DRIVERS[name](Path(tmp) / "f") if name != "zmq" else DRIVERS[name](Path(tmp), 12)
            try:
                form = formation(spec)
            finally:
                cleanup()
        with tempfile.TemporaryDirectory() as tmp:
            spec, cleanup = DRIVERS[name](Path(tmp)) if name != "zmq" else DRIVERS[name](Path(tmp), 16)
            try:
                member = failures(spec, args.rounds, master=False)
                boss = failures(spec, args.rounds, master=True)
            finally:
                cleanup()
        print(f"| {name} | {form:.2f} | {statistics.median(member):.2f} "
              f"(min {min(member):.2f}, max {max(member):.2f}) | {statistics.median(boss):.2f} "
              f"(min {min(boss):.2f}, max {max(boss):.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
