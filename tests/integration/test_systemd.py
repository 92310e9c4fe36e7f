"""The shipped systemd units: `systemd-analyze verify` clean, and every sandbox's exposure <= 2.0.

Static checks; tests/systemd runs the same units under a real systemd and shows the sandboxes hold.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED_BIN = "/opt/nat-ha/bin/nat-ha"
MAX_EXPOSURE = 2.0
MAX_SETUP_EXPOSURE = 2.0  # 4.7 before tests/systemd showed what setup-nat needs; 1.9 now

if shutil.which("systemd-analyze") is None:
    pytest.skip("systemd-analyze not installed (apt-get install systemd)", allow_module_level=True)


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart points at an executable stub (verify checks it exists)."""
    stub = tmp_path / "bin" / "nat-ha"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED_BIN in text, f"{unit.name}: ExecStart should run {INSTALLED_BIN}"
        (out / unit.name).write_text(text.replace(INSTALLED_BIN, str(stub)))
    return out


def _analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], cwd=unit_dir, capture_output=True, text=True, timeout=30, check=False
    )


def test_units_exist() -> None:
    assert {p.name for p in UNITS.glob("*.service")} == {
        "nat-ha.service",
        "nat-ha-setup.service",
        "nat-ha-ctsync.service",
    }


@pytest.mark.parametrize("unit", ["nat-ha.service", "nat-ha-setup.service", "nat-ha-ctsync.service"])
def test_verify_without_warnings(unit_dir: Path, unit: str) -> None:
    proc = _analyze(unit_dir, "verify", str(unit_dir / unit))
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and bad values only warn (rc 0): the unit must produce no output about itself at all.
    noise = [ln for ln in proc.stderr.splitlines() if unit in ln or "Unknown" in ln or "ignoring" in ln]
    assert not noise, "\n".join(noise)


def test_verify_catches_typos(unit_dir: Path) -> None:
    """The check above is meaningful: a misspelt key shows up on stderr."""
    path = unit_dir / "nat-ha.service"
    path.write_text(path.read_text().replace("Restart=always", "Restartt=always"))
    proc = _analyze(unit_dir, "verify", str(path))
    assert "Unknown key" in proc.stderr


def _exposure(unit_dir: Path, unit: str) -> float:
    proc = _analyze(unit_dir, "security", "--offline=true", str(unit_dir / unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def test_agent_sandbox_exposure(unit_dir: Path) -> None:
    score = _exposure(unit_dir, "nat-ha.service")
    assert score <= MAX_EXPOSURE, f"nat-ha.service exposure {score} > {MAX_EXPOSURE}"


def test_setup_sandbox_exposure(unit_dir: Path) -> None:
    score = _exposure(unit_dir, "nat-ha-setup.service")
    assert score <= MAX_SETUP_EXPOSURE, f"nat-ha-setup.service exposure {score} > {MAX_SETUP_EXPOSURE}"


def test_ctsync_sandbox_exposure(unit_dir: Path) -> None:
    score = _exposure(unit_dir, "nat-ha-ctsync.service")
    assert score <= MAX_EXPOSURE, f"nat-ha-ctsync.service exposure {score} > {MAX_EXPOSURE}"


def test_ctsync_unit_contract() -> None:
    """CAP_NET_ADMIN alone, as the agent's transient user (the control socket's owner), the key as a credential."""
    text = (UNITS / "nat-ha-ctsync.service").read_text()
    for line in (
        "Type=notify",
        "Restart=always",
        "User=nat-ha",
        "DynamicUser=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LoadCredential=ctsync.key:/etc/nat-ha/ctsync.key",
        "RuntimeDirectory=nat-ha-ctsync",
        "Before=nat-ha.service",
        f"ExecStart={INSTALLED_BIN} ctsync --config /etc/nat-ha/config.toml",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    from agent.config import ConntrackSyncConfig

    assert ConntrackSyncConfig().control_socket.startswith("/run/nat-ha-ctsync/")  # the RuntimeDirectory
    assert ConntrackSyncConfig().key_file == "/etc/nat-ha/ctsync.key"  # the credential's source
    # The agent's unit must keep its dynamic user's name "nat-ha" (no other User=) to share the socket.
    agent = (UNITS / "nat-ha.service").read_text()
    assert not re.search(r"^User=(?!nat-ha$)", agent, re.MULTILINE)


def test_setup_unit_contract() -> None:
    """Root with CAP_NET_ADMIN alone, /etc the only writable tree, no IP sockets (tests/systemd/test_sandbox.py)."""
    text = (UNITS / "nat-ha-setup.service").read_text()
    for line in (
        "Type=oneshot",
        "Before=nat-ha.service",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "UMask=0022",  # /etc/nat-ha it may create must stay readable by the agent's transient user
        f"ExecStart={INSTALLED_BIN} setup-nat",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    assert not re.search(r"^ProtectKernelTunables=yes", text, re.MULTILINE), "setup-nat writes /proc/sys"


def test_agent_unit_contract() -> None:
    """The settings the agent's code relies on (notify, watchdog, capabilities) are present."""
    text = (UNITS / "nat-ha.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=always",
        "DynamicUser=yes",
        "CapabilityBoundingSet=CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ExecStart={INSTALLED_BIN} agent --config /etc/nat-ha/config.toml",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    assert re.search(r"^WatchdogSec=\d+", text, re.MULTILINE)
    settings = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert not [ln for ln in settings if "CAP_NET_ADMIN" in ln or "CAP_SYS_ADMIN" in ln]
