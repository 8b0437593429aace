"""The repository documents itself: no pointers outside it, no dead links.

* No tracked source or documentation file (``git ls-files``: ``*.py``,
  ``*.md``, ``*.cfg``, ``*.sh``) refers to documents that are not in the
  repository (a ``shared`` directory next to the clone, the design or
  protocol notes it held) or to items of the team's issue tracker; the code
  cites ``docs/`` instead.
* Every relative link in ``README.md`` and ``docs/*.md`` names an existing
  file, and every ``#anchor`` an existing heading.
* Every section (``§N``) the code cites exists in ``docs/protocol.md``, and
  that page lists every opcode and result code the codec knows.
* ``LICENSE`` is the GPL-2.0 text that ``setup.cfg`` names.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from sheep import proto
from sheep.proto.errors import RESULTS

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.quick

# Pages docs/operations.md must link (each also checked to exist, like every link).
OPERATIONS_LINKS = ["docs/multi-host.md", "docs/metrics-and-logs.md", "docs/json-output.md",
                    "docs/operations-safety.md", "docs/deployment.md"]

# The patterns are assembled from pieces so that this file does not match them.
_DOTDOT = re.escape("..") + "/" + "shared"
OUTSIDE = [
    (re.compile(_DOTDOT), "a path outside the repository"),
    (re.compile(r"\b" + "DESIGN" + r"\b"), "the design notes outside the repository"),
    (re.compile(r"\b" + "PROTOCOL" + r"(\.md\b|\s*§)"),
     "the protocol notes outside the repository (cite docs/protocol.md)"),
    (re.compile(r"\b" + "issue" + r"s?\s*#?\s*\d+", re.I), "an issue-tracker reference"),
    (re.compile(r"\b" + "issue" + r"s?\b[,:]?\s+(points?|items?)\s+\d+", re.I),
     "an issue-tracker reference"),
]
# a protocol.md that is not ours: ours is docs/protocol.md (or protocol.md in a
# link between the pages of docs/)
OTHER_PROTOCOL_MD = re.compile(r"(?<![\w/.-])" + "protocol" + r"\.md\b", re.I)


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n]
    return [REPO / n for n in names if n.endswith(suffixes) and (REPO / n).is_file()]


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def test_no_references_outside_the_repository():
    me = Path(__file__).resolve()
    bad = []
    for path in tracked(".py", ".md", ".cfg", ".sh"):
        if path.resolve() == me:
            continue
        text = path.read_text(errors="replace")
        rel = path.relative_to(REPO).as_posix()
        for pattern, what in OUTSIDE:
            for m in pattern.finditer(text):
                bad.append(f"{rel}:{_line(text, m.start())}: {m.group(0)!r} ({what})")
        if not rel.startswith("docs/"):
            for m in OTHER_PROTOCOL_MD.finditer(text):
                bad.append(f"{rel}:{_line(text, m.start())}: {m.group(0)!r} (not docs/protocol.md)")
    assert not bad, "references outside the repository:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------
# links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def anchors(md: str) -> set[str]:
    """GitHub's heading anchors of a Markdown text."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", md).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_relative_links_and_anchors_exist():
    bad = []
    for page in doc_pages():
        text = page.read_text()
        body = _FENCE.sub("", text)
        for m in _LINK.finditer(body):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page.resolve()
            rel = dest.relative_to(REPO).as_posix() if dest.is_relative_to(REPO) else str(dest)
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                bad.append(f"{where}: no file {rel}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                bad.append(f"{where}: no heading #{anchor} in {rel}")
    assert not bad, "dead links:\n" + "\n".join(bad)


def test_readme_links_the_docs():
    readme = (REPO / "README.md").read_text()
    for page in ["docs/architecture.md", "docs/protocol.md", "docs/operations.md",
                 "docs/data-safety.md", "docs/multi-host.md"]:
        assert f"({page}" in readme, f"README.md does not link {page}"
    ops = (REPO / "docs" / "operations.md").read_text()
    for name in OPERATIONS_LINKS:
        assert f"({Path(name).name}" in ops, f"docs/operations.md does not link {name}"


def test_anchor_rule_matches_github():
    assert anchors("## 2. Request header (`sd_req`, 48 bytes)\n## Fencing [`sheep/vdi/locks.py`]\n"
                   "## Fencing [`sheep/vdi/locks.py`]\n") == {
        "2-request-header-sd_req-48-bytes", "fencing-sheepvdilockspy", "fencing-sheepvdilockspy-1"}


# ---------------------------------------------------------------------------
# docs/protocol.md against the code


def protocol_sections() -> set[str]:
    text = (REPO / "docs" / "protocol.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))


def test_cited_protocol_sections_exist():
    sections = protocol_sections()
    assert {"1", "2.1", "7.3", "12.3", "14.5", "17.4", "18.4"} <= sections
    bad = []
    for path in tracked(".py"):
        text = path.read_text(errors="replace")
        for m in re.finditer(r"§\s*(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?", text):
            for num in filter(None, m.groups()):
                if num not in sections:
                    bad.append(f"{path.relative_to(REPO)}:{_line(text, m.start())}: §{num}")
    assert not bad, "sections cited but not in docs/protocol.md:\n" + "\n".join(bad)


def test_protocol_doc_lists_every_opcode_and_result_code():
    text = (REPO / "docs" / "protocol.md").read_text()
    missing = [op.name for op in proto.Op if not re.search(rf"\b{op.name}\b", text)]
    assert not missing, f"opcodes missing from docs/protocol.md: {missing}"
    missing = [f"0x{code:02X} {name}" for code, (name, _msg) in RESULTS.items()
               if f"| 0x{code:02X} | {name} |" not in text]
    assert not missing, f"result codes missing from docs/protocol.md §6: {missing}"


# ---------------------------------------------------------------------------
# LICENSE


def test_license_is_the_gpl2_text_setup_cfg_names():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["license"] == "GPL-2.0-only"
    text = (REPO / "LICENSE").read_text()
    debian = Path("/usr/share/common-licenses/GPL-2")
    if debian.exists():
        assert text == debian.read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert "TERMS AND CONDITIONS FOR COPYING, DISTRIBUTION AND MODIFICATION" in text
