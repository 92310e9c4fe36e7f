"""The stack's user data, run for real: deploy/bootstrap/nat-ha-bootstrap.sh as both templates embed it.

The systemd lab's image *is* its result: agent/lab/nspawn.py builds this checkout's install bundle
with deploy/release.py, renders the template's user data as Fn::Sub would (the bundle by file URL
and its sha256) and runs it as root in a transient unit of a booted Debian bookworm container,
joined to a namespace with a pub0 interface and a default route, as an EC2 instance has. What
differs from EC2, on purpose:

* the package step (`dnf install -y python3.11 nftables`) is skipped (NAT_HA_SKIP_PACKAGES=1):
  the container has no dnf and no network; the image has Debian's python3.11, python3.11-venv
  and nftables instead (nspawn.ROOTFS_PACKAGES);
* the bundle comes by a file URL of a read-only bind, not s3:// or https:// (no network), and
  CloudFormation is the lab's recorder (agent.lab.awsrecorder) on the namespace's loopback;
  identity and credentials come from a lab IMDSv2, as on EC2.

The failure path is the bake itself: its namespace has no EC2 or DynamoDB, so the agent cannot
start, and the bootstrap must signal FAILURE at that step. The success path runs the same user data
again on a NAT of the lab whose agent is up: it must reach the end and signal SUCCESS only after
`nat-ha wait-healthy` saw the agent healthy. (The re-run keeps the NAT's lab config, as the
bootstrap keeps any config it finds, and its agent was started by the lab, not by this run.)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.lab import awsrecorder, nspawn, userdata
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
    assert set(variables) == {"EgressTables", "NatSubnets", "NatEips", "CtsyncKeySecret"}  # the rest: parameters
    assert userdata.names(userdata.template_text()) == {
        "NatHaGroup", "AWS::Region", "AWS::StackName", "Table", "NatHaArtifact", "NatHaArtifactSha256",
        "MetricsListen", "EgressIp", "EgressTables", "NatSubnets", "NatEips", "ConntrackSync", "CtsyncKeySecret",
    }  # fmt: skip


def test_rendered_user_data_is_valid_bash() -> None:
    """The user data, as CloudFormation renders it, parses as bash: found here, not by a 2-minute systemd lab."""
    rendered = userdata.render(group="g", region="eu-west-1", table="t", artifact="https://x/b.tgz", sha256="a" * 64)
    checked = subprocess.run(["bash", "-n"], input=rendered, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_fn_sub_like_cloudformation() -> None:
    assert userdata.fn_sub("a ${X} ${!Y} ${AWS::Region}", {"X": "1", "AWS::Region": "r"}) == "a 1 ${Y} r"
    with pytest.raises(KeyError):
        userdata.fn_sub("${Missing}", {})


@pytest.mark.systemd
@pytest.mark.timeout(300)  # the first test of the tier also sets the lab up (about a minute)
def test_user_data_installs_the_bundle_and_the_units_and_signals_a_failure(sdlab: NetLab) -> None:
    image = sdlab.image
    assert image is not None
    log, layer = image.bootstrap_log, image.layer
    assert "nat-ha bootstrap: package step skipped (NAT_HA_SKIP_PACKAGES=1)" in log
    assert f"{image.bundle.sha256}" in log and "bundle.tar.gz: OK" in log  # sha256sum --check
    assert "--require-hashes" in log and "Successfully installed" in log and "nat-ha-0.1.0" in log
    steps = ("sysctl net.ipv4.ip_forward = 1", "masquerade on pub0 (nftables)",
             "persisted masquerade rule in /etc/nat-ha/nat-ha.nft", "include of /etc/nat-ha/nat-ha.nft")  # fmt: skip
    for item in steps:
        assert f"applied: {item}" in log, item
    for unit in ("nat-ha-setup.service", "nat-ha.service", "nat-ha-ctsync.service"):
        assert (layer / "etc/systemd/system" / unit).read_text() == (REPO / "deploy/systemd" / unit).read_text()
    for unit in ("nat-ha-setup.service", "nat-ha.service"):
        assert (layer / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), f"{unit} not enabled"
    # ConntrackSync=off (the default): the sync's unit is installed, not enabled, and no key is fetched.
    assert not (layer / "etc/systemd/system/multi-user.target.wants/nat-ha-ctsync.service").exists()
    assert not (layer / "etc/nat-ha/ctsync.key").exists() and "secretsmanager" not in log
    config = (layer / "etc/nat-ha/config.toml").read_text()
    assert config == (
        'group = "lab"\nregion = "us-east-1"\nmembers_from_tags = true\negress_ip = "off"\n\n'
        '[store]\ntable = "nat-ha"\n\n[metrics]\nlisten = "127.0.0.1:9510"\n'
    )
    assert (layer / "etc/nat-ha/config.toml").stat().st_mode & 0o777 == 0o644
    assert "home = /usr/bin" in (layer / "opt/nat-ha/pyvenv.cfg").read_text(), "not the container's own python"
    assert (layer / "usr/local/bin/nat-ha").is_symlink()
    # The wheel release.py built: its license, metadata and deploy files (the units came from there).
    (dist,) = (layer / "opt/nat-ha/lib/python3.11/site-packages").glob("nat_ha-*.dist-info")
    assert (dist / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    metadata = (dist / "METADATA").read_text()
    assert "License: Apache-2.0" in metadata and "Project-URL: Source, https://github.com/nat-ha/nat-ha" in metadata
    deploy = dist.parent / "agent" / "deploy"
    assert (deploy / "iam" / "nat-ha-policy.json").read_text() == (REPO / "deploy/iam/nat-ha-policy.json").read_text()
    # The agent cannot start here (no EC2, no DynamoDB): the step fails, and the stack hears it at once.
    assert image.bootstrap_rc != 0 and "nat-ha bootstrap: FAILED at step 'start'" in log
    assert "nat-ha bootstrap: done" not in log and "wait-healthy" not in log.split("FAILED at step")[0][-300:]
    (signal,) = image.signals
    assert {k: signal[k] for k in ("Action", "StackName", "LogicalResourceId", "UniqueId", "Status")} == {
        "Action": "SignalResource", "StackName": "nat-ha-lab", "LogicalResourceId": "NatGroup1",
        "UniqueId": "i-0bake0000000000001", "Status": "FAILURE",
    }  # fmt: skip
    journal = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", "-D", str(next((layer / "var/log/journal").iterdir())),
         "-u", "nat-ha.service"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    assert "nat-ha agent: members_from_tags: cannot discover members" in journal
    assert "Traceback" not in journal


@pytest.mark.systemd
@pytest.mark.timeout(180)
def test_user_data_signals_success_once_the_agent_is_healthy(lab: NetLab) -> None:
    image = lab.image
    assert image is not None
    ct = lab.container(1)
    script = userdata.render(group=lab.group, region="us-east-1", table=lab.table, artifact=image.bundle.url,
                             sha256=image.bundle.sha256)  # fmt: skip
    t0 = time.time()
    with nspawn.lab_aws(lab.topo.nat_ns(1), "", lab.workdir) as signals:
        done = nspawn.run_user_data(ct, script, timeout=150)
        recorded = awsrecorder.read(signals)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-2000:]
    assert "nat-ha bootstrap: keeping the existing /etc/nat-ha/config.toml" in log
    assert f"nat-ha agent of {lab.nats[1].instance_id} is healthy" in log
    assert log.index("is healthy") < log.index("signalled SUCCESS to NatGroup1 of nat-ha-lab")
    (signal,) = recorded
    assert (signal["Status"], signal["UniqueId"], signal["LogicalResourceId"]) == (
        "SUCCESS", lab.nats[1].instance_id, "NatGroup1")  # fmt: skip
    assert ct.is_active("nat-ha.service") == "active"
    assert lab.events_since(t0, "route") == [], "re-running the bootstrap on a serving NAT moved a route"
