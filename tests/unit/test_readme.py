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
