"""The stack's user data, run for real: deploy/bootstrap/nat-ha-bootstrap.sh as both templates embed it.

The systemd lab's image *is* its result: agent/lab/nspawn.py renders the template's user data
as Fn::Sub would (group lab, region us-east-1, table nat-ha, PipSpec nat-ha) and runs it as root
in a transient unit of a booted Debian bookworm container, joined to a namespace with a pub0
interface and a default route, as an EC2 instance has. Two things differ from EC2, on purpose:

* the package step (`dnf install -y python3.11 nftables`) is skipped (NAT_HA_SKIP_PACKAGES=1):
  the container has no dnf and no network; the image has Debian's python3.11, python3.11-venv
  and nftables instead (nspawn.ROOTFS_PACKAGES);
* pip installs from a local wheel directory (NAT_HA_FIND_LINKS, --no-index): this checkout's
  nat-ha and its dependencies, built on the host, instead of PyPI.

The last step, `systemctl enable --now`, starts the agent, which cannot work there: the bake
namespace has no IMDS and no AWS. It must say so in one line, and systemd keeps retrying it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.lab import userdata
from agent.lab.netlab import NetLab

REPO = Path(__file__).resolve().parents[2]


class _CfnLoader(yaml.SafeLoader):
    """Short intrinsic tags as their long form (enough to reach the user data)."""


_CfnLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: {f"Fn::{suffix}": loader.construct_scalar(node)
    if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.SequenceNode) else None},
)  # fmt: skip


@pytest.mark.parametrize("name", ["nat-ha-vpc.yaml", "nat-ha-existing-vpc.yaml"])
def test_templates_embed_the_bootstrap_file(name: str) -> None:
    """What the lab runs is what ships: the templates' user data is the file with the units in it."""
    template: Any = yaml.load((REPO / "deploy" / "cloudformation" / name).read_text(), Loader=_CfnLoader)
    data = template["Resources"]["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    text, variables = data["Fn::Base64"]["Fn::Sub"]
    assert text == userdata.template_text()
    assert set(variables) == {"EgressTables"}  # computed by the template; the rest are its parameters
    assert userdata.names(userdata.template_text()) == {
        "NatHaGroup", "AWS::Region", "Table", "PipSpec", "NatHaVersion", "MetricsListen", "EgressIp", "EgressTables"
    }  # fmt: skip


def test_rendered_user_data_is_valid_bash_with_each_file_once() -> None:
    """Each embedded file appears once (a marker named in a comment would embed it there too) and the
    user data, as CloudFormation renders it, parses as bash: found here, not by a 2-minute systemd lab."""
    script = (REPO / "deploy" / "bootstrap" / "nat-ha-bootstrap.sh").read_text()
    for marker in ("__SETUP_UNIT__", "__UNIT__UNIT", "__EGRESS_CONFIG__"):
        assert script.count(marker) == 1, marker
    rendered = userdata.render(group="g", region="eu-west-1", table="t", pip_spec="nat-ha")
    checked = subprocess.run(["bash", "-n"], input=rendered, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_fn_sub_like_cloudformation() -> None:
    assert userdata.fn_sub("a ${X} ${!Y} ${AWS::Region}", {"X": "1", "AWS::Region": "r"}) == "a 1 ${Y} r"
    with pytest.raises(KeyError):
        userdata.fn_sub("${Missing}", {})


@pytest.mark.systemd
@pytest.mark.timeout(300)  # the first test of the tier also sets the lab up (about a minute)
def test_user_data_installs_nat_ha_and_the_units(sdlab: NetLab) -> None:
    image = sdlab.image
    assert image is not None
    log, layer = image.bootstrap_log, image.layer
    assert "nat-ha bootstrap: package step skipped (NAT_HA_SKIP_PACKAGES=1)" in log
    assert "+ python3.11 -m venv /opt/nat-ha" in log
    assert "Successfully installed" in log and "nat-ha-0.1.0" in log
    steps = ("sysctl net.ipv4.ip_forward = 1", "masquerade on pub0 (nftables)",
             "persisted masquerade rule in /etc/nat-ha/nat-ha.nft", "include of /etc/nat-ha/nat-ha.nft")  # fmt: skip
    for item in steps:
        assert f"applied: {item}" in log, item
    for unit in ("nat-ha-setup.service", "nat-ha.service"):
        assert (layer / "etc/systemd/system" / unit).read_text() == (REPO / "deploy/systemd" / unit).read_text()
        assert (layer / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), f"{unit} not enabled"
    config = (layer / "etc/nat-ha/config.toml").read_text()
    assert config == (
        'group = "lab"\nregion = "us-east-1"\nmembers_from_tags = true\negress_ip = "off"\n\n'
        '[store]\ntable = "nat-ha"\n\n[metrics]\nlisten = "127.0.0.1:9510"\n'
    )
    assert (layer / "etc/nat-ha/config.toml").stat().st_mode & 0o777 == 0o644
    assert "home = /usr/bin" in (layer / "opt/nat-ha/pyvenv.cfg").read_text(), "not the container's own python"
    assert (layer / "usr/local/bin/nat-ha").is_symlink()
    # The last step: the agent starts and cannot reach IMDS/AWS here, so the script ends non-zero.
    assert image.bootstrap_rc != 0 and "Job for nat-ha.service failed" in log
    journal = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", "-D", str(next((layer / "var/log/journal").iterdir())),
         "-u", "nat-ha.service"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    assert "nat-ha agent: instance_id: not set and IMDSv2 at http://169.254.169.254 did not answer" in journal
    assert "Traceback" not in journal
