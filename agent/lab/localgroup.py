"""A NAT group on one machine: moto server as EC2 and DynamoDB, real agent processes.

Used by ``nat-ha demo`` and by the integration tests. Each agent process plays a
NAT instance: it answers ``tcp-echo`` probes on its own loopback port, so killing
the process is the instance dying. The group "plays EC2": while moto says an
instance is stopped its agent is not running, and when moto says it runs again
(a peer restarted it) its agent is started again. Everything binds to 127.0.0.1
and every process is stopped on exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab.routewatch import route_targets_of

REGION = "us-east-1"
AZS = ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e")
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


MOTO_ACCOUNT = "123456789012"  # moto's default account id


# egress_ip = "follow" (the loopback group and the namespace lab alike): NAT i's ENI carries one
# secondary address per route table, and route table t has an Elastic IP of its own.
def egress_address(i: int, t: int) -> str:
    """NAT i's address for route table t (a secondary address of its ENI, in NAT i's subnet)."""
    return f"10.0.{100 + i}.{21 + t}"


def egress_eip(t: int) -> str:
    """Route table t's Elastic IP."""
    return f"203.0.113.{101 + t}"


def private_subnet(t: int) -> str:
    """Route table t's private subnet."""
    return f"10.0.{1 + t}.0/24"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], *, kill: bool = False, timeout: float = 5.0) -> None:
    """Stop a child this lab started: wake it (it may be SIGSTOPped), SIGTERM or SIGKILL, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class MotoServer:
    """``moto_server`` as a separate process (so it can be paused with SIGSTOP).

    By default on 127.0.0.1 and a free port; the network lab runs it inside a
    namespace by giving a command ``prefix`` (``ip netns exec NS``), its own address
    and a ``ready`` check that polls from inside that namespace.
    """

    def __init__(
        self,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        url: str = "",
        prefix: tuple[str, ...] = (),
        ready: Callable[[], bool] | None = None,
        module: str = "moto.server",
    ) -> None:
        self.port = port or free_port()
        self.url = url or f"http://{host}:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, "-H", host, "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **DUMMY_ENV},
        )
        if not (ready or self.answers)():
            self.stop()
            raise RuntimeError(f"moto server did not start at {self.url} (see {log_path})")

    def answers(self, timeout: float = 20) -> bool:
        """Poll the server until it answers (bounded)."""
        return wait_until(lambda: urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).status == 200, timeout)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@dataclass
class Nat:
    """One simulated NAT instance and its agent process."""

    instance_id: str
    az: str
    route_table: str
    probe_port: int
    metrics_port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    expect_running: bool = True  # False while moto says stopped (the group plays EC2)
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # extra environment of this agent only
    name: str = ""  # what the demo calls it: nat-a, nat-b, ...
    table_name: str = ""  # and its home route table: private-a, private-b, ...


def timing_toml(timing: dict[str, Any]) -> list[str]:
    """The ``[timing]`` table of a generated agent config."""
    return ["[timing]", *(f"{k} = {json.dumps(v)}" for k, v in sorted(timing.items())), ""]


def member_toml(nat: Nat, address: str, probe_port: int = 0, eni: str = "") -> list[str]:
    """The ``[[members]]`` block of one NAT in a generated agent config."""
    port = [f"probe_port = {probe_port}"] if probe_port else []
    return [
        "[[members]]",
        f'instance_id = "{nat.instance_id}"',
        f'address = "{address}"',
        *port,
        *([f'eni = "{eni}"'] if eni else []),
        f'route_tables = ["{nat.route_table}"]',
        f'az = "{nat.az}"',
        "",
    ]


@dataclass
class LocalGroup:
    """``with LocalGroup(workdir) as g:`` - a running n-NAT group (see module doc)."""

    workdir: Path
    n: int = 3
    metrics: bool = True
    group: str = "demo"
    table: str = "nat-ha"
    timing: dict[str, Any] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Extra environment of single agents, by index (bench/footprint.py records one agent's AWS calls).
    nat_env: dict[int, dict[str, str]] = field(default_factory=dict)
    # "icmp" probes 127.0.0.1 like production would probe a peer (bench/footprint.py); the demo's
    # "tcp-echo" makes killing an agent look like its instance dying.
    probe_method: str = "tcp-echo"
    # DynamoDB elsewhere (dynalite); empty: the moto server serves DynamoDB too.
    dynamodb_url: str = ""
    log_format: str = "plain"  # the agents' [log] format; the demo reads "json" for each line's own time
    # Each route table's Elastic IP follows the table: "off" or "follow" (moto with agent.lab.motofix,
    # which binds an association to the private address asked for, as AWS does).
    egress_ip: str = "off"
    egress_order: str = ""  # the agents' egress_order ("" : their default)
    enis: dict[str, str] = field(default_factory=dict)  # instance id -> its ENI (egress)
    allocations: list[str] = field(default_factory=list)  # route table t's EIP allocation id (egress)
    _defer_configs: bool = False
    # Give each agent a runtime directory (what systemd's RuntimeDirectory= is to the unit): a
    # restarted agent process takes its predecessor's session over (agent/handoff.py).
    runtime_dirs: bool = False
    drain_timeout: float = 0.0  # the agents' --drain-timeout (0: their default, 15 s)
    nats: list[Nat] = field(default_factory=list)
    moto: MotoServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ec2_thread: threading.Thread | None = None
    _log: Callable[[str], None] = field(default=lambda _msg: None)
    _record_offsets: dict[Path, int] = field(default_factory=dict)  # bytes of each call record read so far

    DEMO_TIMING: dict[str, Any] = field(
        default_factory=lambda: {
            "failback_hold_down": 5.0,
            "restart_after": 4.0,
            "restart_cooldown": 30.0,
            "restart_poll_interval": 0.3,
            "ec2_reconcile_interval": 2.0,
        }
    )

    # --------------------------------------------------------------- set-up
    def __enter__(self) -> LocalGroup:
        if not 2 <= self.n <= len(AZS):
            raise ValueError(f"a local group has 2 to {len(AZS)} NATs")
        if self.egress_ip not in ("off", "follow"):
            raise ValueError(f"egress_ip: {self.egress_ip!r} is not off or follow")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key, value in DUMMY_ENV.items():  # in-process clients (pynamodb) read credentials from the environment
            os.environ.setdefault(key, value)
        try:
            self.moto = MotoServer(
                self.workdir / "moto.log", module="agent.lab.motofix" if self.egress else "moto.server"
            )
            self._create_world()
            for nat in self.nats:
                self._spawn(nat)
            self._ec2_thread = threading.Thread(target=self._play_ec2, name="play-ec2", daemon=True)
            self._ec2_thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client(self, service: str) -> Any:
        import botocore.session

        assert self.moto is not None
        session = botocore.session.get_session()
        return session.create_client(
            service,
            region_name=REGION,
            endpoint_url=self.moto.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def egress(self) -> bool:
        return self.egress_ip == "follow"

    def _create_world(self) -> None:
        """The VPC, instances and route tables; with egress also each NAT's table addresses and each table's EIP,
        at home."""
        if not self.egress:
            self._create_instances()
            return
        self._defer_configs = True
        self._create_instances()
        self._defer_configs = False
        ec2 = self.client("ec2")
        data = ec2.describe_instances(InstanceIds=self.members)
        for inst in (i for r in data["Reservations"] for i in r["Instances"]):
            self.enis[inst["InstanceId"]] = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
        group_tag = {"Key": "nat-ha:group", "Value": self.group}
        for i, nat in enumerate(self.nats):
            eni = self.enis[nat.instance_id]
            ec2.assign_private_ip_addresses(
                NetworkInterfaceId=eni, PrivateIpAddresses=[egress_address(i, t) for t in range(self.n)]
            )
            ec2.create_tags(Resources=[eni], Tags=[group_tag])
        for t, nat in enumerate(self.nats):
            alloc = ec2.allocate_address(
                Domain="vpc",
                Address=egress_eip(t),
                TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [
                    group_tag, {"Key": "nat-ha:route-table", "Value": nat.route_table}]}],
            )["AllocationId"]  # fmt: skip
            self.allocations.append(alloc)
            ec2.associate_address(
                AllocationId=alloc,
                NetworkInterfaceId=self.enis[nat.instance_id],
                PrivateIpAddress=egress_address(t, t),
                AllowReassociation=True,
            )
        for nat in self.nats:
            nat.config_path.write_text(self._config(nat))

    def _egress_top_toml(self) -> list[str]:
        """The top-level egress keys (the interface of issue 14)."""
        return ['egress_ip = "follow"', *([f'egress_order = "{self.egress_order}"'] if self.egress_order else [])]

    def _egress_tables_toml(self) -> list[str]:
        """One [[egress.tables]] per route table: its EIP, its subnet, every NAT's address for it."""
        lines = []
        for t, nat in enumerate(self.nats):
            addresses = ", ".join(f'"{o.instance_id}" = "{egress_address(j, t)}"' for j, o in enumerate(self.nats))
            lines += [
                "[[egress.tables]]",
                f'route_table = "{nat.route_table}"',
                f'allocation_id = "{self.allocations[t]}"',
                f'subnets = ["{private_subnet(t)}"]',
                f"addresses = {{ {addresses} }}",
                "",
            ]
        return lines

    def _create_instances(self) -> None:
        from coordinator.dynamo import DynamoSettings, init_table

        assert self.moto is not None
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        image = "ami-12c6146b"  # in moto's default AMI list (describe_images costs seconds)
        for i in range(self.n):
            az = AZS[i]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{100 + i}.0/24", AvailabilityZone=az)
            inst = ec2.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                InstanceType="t4g.nano",
                SubnetId=subnet["Subnet"]["SubnetId"],
                PrivateIpAddress=f"10.0.{100 + i}.10",  # the network lab's NAT i has it on its public interface
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": "nat-ha:group", "Value": self.group}]}
                ],
            )["Instances"][0]["InstanceId"]
            ec2.modify_instance_attribute(InstanceId=inst, SourceDestCheck={"Value": False})
            rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
            ec2.create_tags(
                Resources=[rtb],
                Tags=[{"Key": "nat-ha:group", "Value": self.group}, {"Key": "nat-ha:home", "Value": inst}],
            )
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", InstanceId=inst)
            name = f"nat{chr(ord('a') + i)}"
            self.nats.append(
                Nat(
                    inst,
                    az,
                    rtb,
                    free_port(),
                    free_port() if self.metrics else 0,
                    self.workdir / f"{name}.toml",
                    self.workdir / f"{name}.log",
                    env=self.nat_env.get(i, {}),
                    name=f"nat-{name[-1]}",
                    table_name=f"private-{name[-1]}",
                )
            )
        init_table(DynamoSettings(table=self.table, region=REGION, endpoint_url=self.store_url))
        for nat in self.nats:
            nat.config_path.write_text(self._config(nat))

    @property
    def store_url(self) -> str:
        assert self.moto is not None
        return self.dynamodb_url or self.moto.url

    def _config(self, nat: Nat) -> str:
        assert self.moto is not None
        if self._defer_configs:
            return ""  # written once the egress resources exist (_create_world)
        timing = {**self.DEMO_TIMING, **self.timing}
        header = self._header_toml(nat, self.store_url)
        if self.egress:  # top-level keys, before the first table
            header = header[:3] + self._egress_top_toml() + header[3:]
        lines = [
            *header,
            "[probe]",
            f'method = "{self.probe_method}"',
            f"answer_port = {nat.probe_port if self.probe_method == 'tcp-echo' else 0}",
            "",
            "[self_check]",
            "ip_forward = false",
            "masquerade = false",
            "forwarding = false",
            "",
            *timing_toml(timing),
            "[metrics]",
            f'listen = "{f"127.0.0.1:{nat.metrics_port}" if nat.metrics_port else ""}"',
            "",
            "[log]",
            f'format = "{self.log_format}"',
            "",
        ]
        for i, other in enumerate(self.nats):
            # tcp-echo: one address, a port per NAT (its agent answers there). ICMP: an address of its own
            # per NAT - every 127.x address answers on loopback - as each peer has its own in a VPC.
            address = "127.0.0.1" if self.probe_method == "tcp-echo" else f"127.0.0.{1 + i}"
            lines += member_toml(other, address, other.probe_port, eni=self.enis.get(other.instance_id, ""))
        if self.egress:
            lines += self._egress_tables_toml()
        return "\n".join(lines)

    def _header_toml(self, nat: Nat, store_url: str) -> list[str]:
        """Identity and endpoints of one NAT's generated config (what every lab's config shares)."""
        assert self.moto is not None
        return [
            f'group = "{self.group}"',
            f'instance_id = "{nat.instance_id}"',
            f'region = "{REGION}"',
            "",
            "[store]",
            f'table = "{self.table}"',
            f'endpoint_url = "{store_url}"',
            "",
            "[ec2]",
            f'endpoint_url = "{self.moto.url}"',
            # moto's account: the holder tag names arn:aws:ec2:<region>:<account>:instance/<id>
            # (no IMDS on this machine to read it from).
            f'account_id = "{MOTO_ACCOUNT}"',
            "",
        ]

    # ------------------------------------------------------------ processes
    def calls_path(self, instance_id: str) -> Path:
        """Where this NAT's agent records its AWS calls (one JSON line each)."""
        return self.workdir / f"calls-{instance_id}.jsonl"

    def calls(self, instance_id: str, action: str = "") -> list[dict[str, Any]]:
        """The AWS calls this NAT's agents made so far (optionally only one action)."""
        try:
            lines = self.calls_path(instance_id).read_text().splitlines()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.strip()]
        return [c for c in found if not action or c["action"] == action]

    def _spawn(self, nat: Nat) -> None:
        from coordinator.instrument import RECORD_ENV

        record = {RECORD_ENV: str(self.calls_path(nat.instance_id))}
        env = {**os.environ, **DUMMY_ENV, **self.extra_env, **record, **nat.env}
        run_dir = ["--runtime-dir", str(self.runtime_dir(nat.instance_id))] if self.runtime_dirs else []
        if self.drain_timeout:
            run_dir += ["--drain-timeout", str(self.drain_timeout)]
        with open(nat.log_path, "ab") as log:
            nat.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.commands.cli", "agent", "--config", str(nat.config_path), *run_dir],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        nat.starts += 1

    def runtime_dir(self, instance_id: str) -> Path:
        """This NAT's agents' runtime directory (with ``runtime_dirs``)."""
        return self.workdir / f"run-{instance_id}"

    def nat(self, instance_id: str) -> Nat:
        return next(n for n in self.nats if n.instance_id == instance_id)

    @property
    def members(self) -> list[str]:
        return [n.instance_id for n in self.nats]

    @property
    def metrics_targets(self) -> list[str]:
        return [f"127.0.0.1:{n.metrics_port}" for n in self.nats if n.metrics_port]

    def kill(self, instance_id: str) -> None:
        """The NAT instance dies: SIGKILL its agent (moto still says running)."""
        self.signal(instance_id, signal.SIGKILL)

    def signal(self, instance_id: str, sig: int) -> None:
        nat = self.nat(instance_id)
        if nat.proc is not None and nat.proc.poll() is None:
            nat.proc.send_signal(sig)

    def restart_agent(self, instance_id: str) -> None:
        """Start a fresh agent for a NAT whose agent is not running (agent crash, not instance)."""
        nat = self.nat(instance_id)
        if nat.proc is None or nat.proc.poll() is not None:
            self._spawn(nat)

    def alive(self, instance_id: str) -> bool:
        nat = self.nat(instance_id)
        return nat.proc is not None and nat.proc.poll() is None

    def _started_since_last_look(self) -> set[str]:
        """Instances some agent called StartInstances on since the last look (new lines of the call records)."""
        started: set[str] = set()
        for n in self.nats:
            path = self.calls_path(n.instance_id)
            try:
                with open(path, "rb") as fh:
                    fh.seek(self._record_offsets.get(path, 0))
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
            self._record_offsets[path] = self._record_offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("action") == "StartInstances":
                    started.update(rec.get("resources", {}).get("InstanceIds", []))
        return started

    def _play_ec2(self) -> None:
        """Map moto's instance states onto agent processes (stopped: no agent; started: agent again).

        moto stops and starts at once, so a peer's stop and start can both fall between
        two looks at the states: a StartInstances in the agents' call records for an
        instance whose agent is not running counts as a start too.
        """
        ec2 = self.client("ec2")
        while not self._stop.wait(0.1):
            started = self._started_since_last_look()
            try:
                data = ec2.describe_instances(InstanceIds=self.members)
            except Exception:
                continue
            for r in data["Reservations"]:
                for i in r["Instances"]:
                    nat = self.nat(i["InstanceId"])
                    state = i["State"]["Name"]
                    if state in ("stopping", "stopped") and nat.expect_running:
                        nat.expect_running = False
                        self.signal(nat.instance_id, signal.SIGKILL)
                        self._log(f"EC2: {nat.instance_id} {state}")
                    elif state in ("pending", "running") and not nat.expect_running:
                        nat.expect_running = True
                        self._spawn(nat)
                        self._log(f"EC2: {nat.instance_id} {state}: its agent starts")
                    elif (
                        state in ("pending", "running")
                        and nat.instance_id in started
                        and not self.alive(nat.instance_id)
                    ):
                        self._spawn(nat)
                        self._log(f"EC2: {nat.instance_id} stopped and started between two looks: its agent starts")

    # ---------------------------------------------------------------- views
    def route_targets(self) -> dict[str, str]:
        """Route table -> instance EC2 routes 0.0.0.0/0 to (a route to a NAT's ENI counts as a route to its
        instance, as in AWS)."""
        by_eni = {eni: iid for iid, eni in self.enis.items()}
        targets = route_targets_of(self.client("ec2"), [n.route_table for n in self.nats])
        return {rtb: by_eni.get(t, t) for rtb, t in targets.items()}

    def snapshot(self) -> Any:
        from coordinator.dynamo import DynamoSettings, DynamoStore
        from coordinator.items import parse_group

        assert self.moto is not None
        if not hasattr(self, "_store"):
            self._store = DynamoStore(
                DynamoSettings(
                    table=self.table, region=REGION, endpoint_url=self.store_url, connect_timeout_s=2, read_timeout_s=2
                )
            )
        return parse_group(self.group, self._store.query_group(self.group))

    def at_home(self) -> bool:
        """Every route table is held by its home NAT and EC2 routes it there."""
        snap = self.snapshot()
        targets = self.route_targets()
        return all(
            (r := snap.routes.get(n.route_table)) is not None
            and r.owner == n.instance_id
            and targets.get(n.route_table) == n.instance_id
            for n in self.nats
        )

    def wait_for(self, predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
        return wait_until(predicate, timeout, interval)

    # -------------------------------------------------------------- cleanup
    def close(self) -> None:
        self._stop.set()
        if self._ec2_thread is not None:
            self._ec2_thread.join(timeout=2)
        self._stop_agents()
        if self.moto is not None:
            self.moto.stop()
        self._forward_call_records()

    def _stop_agents(self) -> None:
        for nat in self.nats:
            if nat.proc is not None:
                stop_process(nat.proc, kill=True)

    def _forward_call_records(self) -> None:
        """Append every agent's call record to the caller's own record, if it keeps one (the IAM test)."""
        from coordinator.instrument import RECORD_ENV, append_record

        target = os.environ.get(RECORD_ENV)
        if not target:
            return
        for nat in self.nats:
            path = self.calls_path(nat.instance_id)
            if path.exists() and str(path) != target:
                append_record(target, path.read_text())
