"""Figures of a probe: printed, written to ``probe-summary.json``, and turned
into the list of problems the probe asserts is empty."""

from __future__ import annotations

import json
import os


def summarize(probe_dir: str, name: str, figures: dict, findings, extra: dict | None = None,
              cluster=None) -> dict:
    """Print the figures and the evidence; write ``probe-summary.json``."""
    out = {"probe": name, **figures, **findings.figures(),
           "node_reads": findings.node_reads,
           "replica_mismatches_list": findings.mismatched[:50],
           "stale_replicas_list": findings.stale_replicas[:50],
           "missing_replicas_list": findings.missing_replicas[:50],
           "vdi_check_fixed_lines": findings.check_fixed,
           "vdi_check_errors": findings.check_errors,
           "vdi_check_outcome": findings.check_outcome,
           "evidence": findings.evidence, **(extra or {})}
    if cluster is not None:
        out["logs"] = cluster.log_paths()
    path = os.path.join(probe_dir, "probe-summary.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"\n==== {name}: figures ====")
    fixed = ("rounds", "writes_acknowledged", "writes_sent", "reads_checked", "lost",
              "corrupt", "objects", "replica_mismatches", "stale_replicas", "missing_replicas",
              "vdi_check_fixed", "writer_violations", "writer_lost_writes", "write_errors", "read_errors",
              "unsettled_blocks", "failed_writes_inspected", "failed_writes_replicas_disagree",
              "reopens", "settled")
    for k in fixed:
        if k in out:
            print(f"  {k:22s} {out[k]}")
    shown = set(fixed)
    for k, v in {**figures, **(extra or {})}.items():
        if k in shown or k.endswith("_list") or k == "round_log":
            continue
        text = json.dumps(v, default=str)
        print(f"  {k:22s} {text if len(text) < 400 else text[:400] + ' ...'}")
    if findings.evidence:
        print("  evidence:")
        for line in findings.evidence[:40]:
            print("    " + line)
    for line in findings.check_outcome[:20]:
        print("  vdi check: " + line)
    print(f"  summary: {path}")
    return out


def problems(out: dict, reports: list[dict], allow_write_errors: bool = False) -> list[str]:
    """What the probe asserts away: every item is a failure."""
    p = []
    if out.get("stalls"):
        p.append(f"stalled: {out['stalls']}")
    if not out.get("settled", True):
        p.append("the cluster did not settle (members/recovery) before verification")
    for k in ("lost", "corrupt", "replica_mismatches", "stale_replicas", "missing_replicas",
              "vdi_check_fixed", "writer_violations", "unsettled_blocks",
              "failed_writes_replicas_disagree"):
        if out.get(k):
            p.append(f"{k} = {out[k]}")
    unread = {w: c for w, c in (out.get("node_reads") or {}).items()
              if any(k.startswith("open-error") or k == "read-error" for k in c)}
    if unread:  # a settled cluster serves every reader through every node
        p.append(f"reads through some nodes failed after settling: {unread}")
    if out.get("vdi_check_errors"):
        p.append(f"collie vdi check errors: {out['vdi_check_errors']}")
    for r in reports:
        for v in r["violation_list"][:5]:
            p.append(f"writer {r['id']} read violation: {v}")
        for i in [i for i in r.get("inspections", []) if i.get("disagree")][:5]:
            p.append(f"writer {r['id']}: a failed write left replicas that disagree: {i}")
    if not allow_write_errors and out.get("write_errors"):
        p.append(f"writers saw write errors (the client promises none on failover): "
                 f"{out['write_errors']}")
    return p
