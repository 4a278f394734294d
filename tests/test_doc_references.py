"""Every pointer into the documentation leads somewhere: `README "Section"` / `docs/x.md "Section"` in code,
requirements and docs names a real heading of that file, and every markdown link `file.md#anchor` names a heading
of its target. A renamed heading fails here instead of in a user's terminal."""
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

# README / docs/x.md, then a quoted section name: README "Speed", README, "Set up", docs/gpu.md "Benchmark".
# In Python sources the quotes may be escaped (README \"Speed\").
QUOTED = re.compile(r"""(README(?:\.md)?|docs/[\w.-]+\.md)[,:]?[ \t]*(?:section[ \t]+)?"""
                    r"""\\?["“]([^"”\\\n]{2,80})\\?["”]""")
LINK = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def headings(path: Path) -> list[str]:
    """The headings of a markdown file (not `#` lines inside fenced code), without a leading "1. "."""
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            found.append(re.sub(r"^\d+\.\s+", "", match.group(1)))
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sources(root: Path) -> list[Path]:
    code = [p for folder in ("engines", "calibration", "live", "remote", "scripts")
            for p in (root / folder).rglob("*.py")]
    listed = [*code, *root.glob("*.py"), *root.glob("requirements*.txt"), root / "pyproject.toml", root / "README.md",
              *(root / "docs").glob("*.md")]
    return sorted(path for path in listed if path.is_file())


def broken_references(root: Path) -> list[str]:
    problems = []
    for path in sources(root):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(root)
        for match in QUOTED.finditer(text):
            target = root / ("README.md" if match.group(1).startswith("README") else match.group(1))
            section = match.group(2).strip()
            if not target.is_file():
                problems.append(f"{where}: {match.group(0)!r} names a missing file")
            elif section not in headings(target) and section not in [h.replace("`", "") for h in headings(target)]:
                problems.append(f"{where}: {match.group(0)!r}: no such heading in {target.relative_to(root)}")
        if path.suffix == ".md":
            for match in LINK.finditer(text):
                target = (path.parent / match.group(1)).resolve() if match.group(1) else path
                if not target.is_file():
                    problems.append(f"{where}: link {match.group(0)!r} to a missing file")
                elif match.group(2) not in {anchor(h) for h in headings(target)}:
                    problems.append(f"{where}: link {match.group(0)!r}: no such heading in {target.name}")
    return problems


def test_every_section_reference_points_at_a_real_heading():
    assert broken_references(REPO) == []


def test_the_references_are_really_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Title\n\n## Set up\n\n```\n# Not a heading\n```\n\n### 1. Start it\n")
    (tmp_path / "docs" / "gpu.md").write_text("# GPU\n\n## Benchmark\n\nSee [set up](../README.md#set-up).\n"
                                               "Bad [link](../README.md#gone), [here](#benchmark).\n")
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "x.py").write_text('HINT = "see README \\"Start it\\""\nOLD = \'README "Virtual camera '
                                            'setup"\'\nNOTE = "docs/gpu.md, \\"Benchmark\\"; '
                                            'README, \\"Not a heading\\""\n')
    problems = broken_references(tmp_path)
    assert len(problems) == 3, problems
    assert any("Virtual camera setup" in p for p in problems) and any("Not a heading" in p for p in problems)
    assert any("#gone" in p for p in problems)


@pytest.mark.parametrize("heading, expected", [("Set up", "set-up"), ("GPU engines and benchmarks",
                                                                        "gpu-engines-and-benchmarks"),
                                               ("The installed command, cameras by name, the doctor",
                                                "the-installed-command-cameras-by-name-the-doctor")])
def test_anchors_are_github_s(heading, expected):
    assert anchor(heading) == expected
