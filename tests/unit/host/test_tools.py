"""The host's tools are found in the sbin directories when PATH leaves them out (nft, iptables on Debian)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host import tools


def test_a_tool_only_in_sbin_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    tool = sbin / "nft"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    (sbin / "notexec").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbin on PATH
    monkeypatch.setattr(tools, "SBIN", (str(tmp_path / "none"), str(sbin)))
    assert tools.find("nft") == str(tool)
    assert tools.argv(["nft", "list", "ruleset"]) == [str(tool), "list", "ruleset"]
    assert tools.find("notexec") is None, "a file that is not executable is no tool"
    assert tools.find("absent") is None and tools.argv(["absent"]) is None


def test_path_wins_over_sbin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("bin", "sbin"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ip").write_text("#!/bin/sh\n")
        (tmp_path / folder / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(tools, "SBIN", (str(tmp_path / "sbin"),))
    assert tools.find("ip") == str(tmp_path / "bin" / "ip")
