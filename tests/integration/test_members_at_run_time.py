"""Agents that find their group by tags learn of new and gone members while running (real processes).

A moto server (an HTTP endpoint on 127.0.0.1, in the test's process) plays EC2 and DynamoDB;
each NAT is an instance tagged ``nat-ha:group`` and ``nat-ha:slot`` (as an Auto Scaling group's
are) whose agent process runs with ``members_from_tags = true`` and nothing else about its peers.
The instances' private addresses are loopback ones (a VPC of 127.0.0.0/16 in moto), so each agent
answers ``tcp-echo`` probes on its own discovered address. Route tables name their home by slot;
there is no default route until an agent claims a table.

The story is a replacement: slot nat-2's NAT leaves (SIGTERM: it drains; its instance is
terminated) and a new instance takes the slot. Its peer learns of the change without a restart
(the new one's heartbeat makes it look at once), the table ends at the new NAT, the old one's
metrics series go, and NAT a's own table never moves. (A table whose slot is empty for a while is
covered on the HA cycle's harness: tests/unit/test_cycle_membership.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.lab.localgroup import DUMMY_ENV, MOTO_ACCOUNT, REGION, free_port, stop_process, timing_toml
from tests.servers import threaded_moto_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GROUP = "tags"
PROBE_PORT = free_port()
# A slower cadence than the default: agents on one moto server on a shared 2-core machine.
TIMING = {"failback_hold_down": 2.0, "discover_interval": 1.0, "restart_max_attempts": 0, "ec2_reconcile_interval": 1.0,
          "cycle_interval": 0.5, "heartbeat_interval": 1.0, "lease": 2.0, "store_timeout": 0.4, "ec2_timeout": 1.0,
          "silent_owner_after": 3.0}  # fmt: skip


def wait(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except Exception:  # the store or EC2 answered badly once: look again
            pass
        time.sleep(0.2)
    return False


class World:
    def __init__(self, workdir: Path, moto_url: str) -> None:
        import boto3

        self.workdir, self.url = workdir, moto_url
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
        vpc = self.ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
        self.subnets = [
            self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{i}.0/24", AvailabilityZone=f"{REGION}{'abc'[i - 1]}")[
                "Subnet"]["SubnetId"]
            for i in (1, 2)
        ]  # fmt: skip
        self.tables = {}
        for i in (1, 2):
            rtb = self.ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
            tags = [{"Key": "nat-ha:group", "Value": GROUP}, {"Key": "nat-ha:home", "Value": f"nat-{i}"}]
            self.ec2.create_tags(Resources=[rtb], Tags=tags)
            self.tables[i] = rtb
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics: dict[str, int] = {}

    def launch(self, slot: int, host: int) -> str:
        """A NAT instance in slot ``slot`` (its AZ's subnet), and its agent."""
        tags = [{"Key": "nat-ha:group", "Value": GROUP}, {"Key": "nat-ha:slot", "Value": f"nat-{slot}"}]
        iid = str(self.ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=self.subnets[slot - 1],
            PrivateIpAddress=f"127.0.{slot}.{host}", TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"])  # fmt: skip
        port = free_port()
        config = self.workdir / f"{iid}.toml"
        config.write_text("\n".join([
            f'group = "{GROUP}"', f'instance_id = "{iid}"', f'region = "{REGION}"', "members_from_tags = true", "",
            "[store]", 'table = "nat-ha"', f'endpoint_url = "{self.url}"', "",
            "[ec2]", f'endpoint_url = "{self.url}"', f'account_id = "{MOTO_ACCOUNT}"', "",
            "[probe]", 'method = "tcp-echo"', f"tcp_port = {PROBE_PORT}", f"answer_port = {PROBE_PORT}", "",
            "[self_check]", "ip_forward = false", "masquerade = false", "forwarding = false", "",
            *timing_toml(TIMING), "[metrics]", f'listen = "127.0.0.1:{port}"', "",
        ]))  # fmt: skip
        self.metrics[iid] = port
        with open(self.workdir / f"{iid}.log", "ab") as log:
            self.procs[iid] = subprocess.Popen(
                [sys.executable, "-m", "agent.commands.cli", "agent", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **DUMMY_ENV},
            )  # fmt: skip
        return iid

    def log(self, iid: str) -> str:
        return (self.workdir / f"{iid}.log").read_text(errors="replace")

    def owners(self) -> dict[int, tuple[str, int]]:
        """Slot -> (owner, term) of its route table's lease."""
        from coordinator.dynamo import DynamoSettings, DynamoStore
        from coordinator.items import parse_group

        store = DynamoStore(DynamoSettings(table="nat-ha", region=REGION, endpoint_url=self.url,
                                           connect_timeout_s=2, read_timeout_s=2))  # fmt: skip
        snap = parse_group(GROUP, store.query_group(GROUP))
        return {i: ((r.owner, r.term) if (r := snap.routes.get(rtb)) else ("", 0)) for i, rtb in self.tables.items()}

    def routed(self, slot: int) -> str:
        (rt,) = self.ec2.describe_route_tables(RouteTableIds=[self.tables[slot]])["RouteTables"]
        route = next((r for r in rt["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"), {})
        return str(route.get("InstanceId", ""))

    def at(self, slot: int, iid: str) -> bool:
        return self.owners()[slot][0] == iid and self.routed(slot) == iid

    def scrape(self, iid: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics[iid]}/metrics", timeout=2) as r:
            return str(r.read().decode())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from coordinator.dynamo import DynamoSettings, init_table

    for key, value in DUMMY_ENV.items():
        os.environ.setdefault(key, value)
    with threaded_moto_server() as url:  # a real HTTP endpoint, in this process: cheap to start
        w = World(tmp_path, url)
        try:
            init_table(DynamoSettings(table="nat-ha", region=REGION, endpoint_url=url))
            yield w
        finally:
            for proc in w.procs.values():
                stop_process(proc, kill=True)


def test_a_replacement_is_learned_while_running_and_moves_no_healthy_nats_table(world: World) -> None:
    a, b = world.launch(1, 10), world.launch(2, 10)
    assert wait(lambda: world.at(1, a) and world.at(2, b), 40), world.log(a)[-2000:]
    first = world.owners()[1]

    # Slot nat-2's NAT leaves (Auto Scaling would terminate it: it drains first) and a new one takes the slot.
    world.procs[b].send_signal(signal.SIGTERM)
    assert world.procs[b].wait(30) == 0, world.log(b)[-2000:]
    assert world.owners()[2][0] == a, "the leaving NAT drained its table to its peer"
    world.ec2.terminate_instances(InstanceIds=[b])
    d = world.launch(2, 11)
    assert wait(lambda: world.at(2, d), 40), world.log(a)[-2000:]
    assert f"members: member {d} joined ({REGION}b, slot nat-2)" in world.log(a)
    assert f"members: route table {world.tables[2]}: home {b} -> {d}" in world.log(a)
    assert wait(lambda: f"members: member {b} left" in world.log(a), 20)
    assert wait(lambda: f'peer="{b}"' not in world.scrape(a), 10), "the departed NAT's metrics stayed"
    assert f'peer="{d}"' in world.scrape(a)

    assert world.owners()[1] == first, "NAT a's table moved while a was healthy"
    assert all(world.procs[i].poll() is None for i in (a, d)), "an agent exited"
    assert "Traceback" not in world.log(a) + world.log(d)
