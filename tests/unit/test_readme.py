"""The README stays true: its config reference is the generated one, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_config_reference_is_current() -> None:
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    table = README[README.index(start) + len(start) : README.index(end)]
    assert table == reference_markdown(), "README's config table is stale: paste `nat-ha check-config --reference`"


def test_relative_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", README):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"


def test_every_subcommand_is_documented() -> None:
    from agent.commands.cli import COMMANDS

    for name in COMMANDS:
        assert f"`nat-ha {name}" in README, f"nat-ha {name} is not in the README's command table"


def test_no_file_cites_what_is_not_in_the_repository() -> None:
    """A user has the repository, not the notes it was written from: no file names them."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    # The names are assembled so that this file does not itself cite them.
    pattern = re.compile("DESIGN" + r"\.md|\b" + "research" + "/|" + r"\.\." + "/shared")
    me = Path(__file__).resolve()
    found = []
    for name in files:
        path = ROOT / name
        if path.resolve() == me or path.suffix not in {".md", ".py", ".yml", ".yaml", ".toml", ".sh", ".json", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not found, f"references to files outside the repository: {found}"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_one_set_of_headline_figures_taken_from_the_measured_table() -> None:
    """The headline (the paragraph under the comparison table, and nat-ha's row in it) quotes only figures
    that the Measured table has: it once said 1.10 / 1.47 s while the table said 1.00 / 1.56 s."""
    start, end = "<!-- headline:start -->", "<!-- headline:end -->"
    headline = README[README.index(start) + len(start) : README.index(end)]
    headline += next(line for line in README.splitlines() if line.startswith("| **nat-ha** |"))
    measured = _section(README, "## Measured")
    figures = {f.rstrip(".,") for f in re.findall(r"\d[\d.,–]*", headline)}
    table = {f.rstrip(".,") for f in re.findall(r"\d[\d.,–]*", measured)}
    assert len(figures) >= 8, figures
    missing = sorted(figures - table)
    assert not missing, f"headline figures not in the Measured table: {missing}"
    claims = re.findall(r"\*\*(.+?)\*\*", README[README.index(start) : README.index(end)])
    assert len(claims) >= 5, claims
    unsaid = [c for c in claims if c not in measured]
    assert not unsaid, f"headline claims the Measured table does not make in these words: {unsaid}"


def test_the_readme_leads_with_what_a_user_does() -> None:
    """Demo, deploy, operate, then how it works: the order of the sections, not only their presence."""
    headings = [line for line in README.splitlines() if line.startswith("## ")]
    order = ["## The two commands", "## Deploy to your VPC", "## Operate", "## How it works", "## Measured"]
    assert [h for h in headings if h in order] == order, headings
    assert headings.index("## How it works") < headings.index("## What is guaranteed, and what is assumed")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, each space a hyphen (code blocks skipped)."""
    out, code = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            code = not code
        elif line.startswith("#") and not code:
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_anchors_of_links_exist() -> None:
    """A link's #section names a heading of its page, in README.md and every other page of the repository
    (two pointed at a section that was renumbered)."""
    import subprocess

    pages = subprocess.run(["git", "ls-files", "*.md"], capture_output=True, text=True, cwd=ROOT, check=True)
    broken = []
    for name in pages.stdout.split():
        page = ROOT / name
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
            linked = page.parent / target if target else page
            if "://" in target or linked.suffix != ".md" or not linked.exists():
                continue
            if anchor not in _anchors(linked.read_text()):
                broken.append(f"{name}: {target}#{anchor}")
    assert len(pages.stdout.split()) > 5
    assert not broken, f"links to missing sections: {broken}"
