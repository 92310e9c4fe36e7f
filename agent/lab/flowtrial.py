"""Long-lived flows through a NetLab while its route tables move (tests/lab/test_flows.py, bench/flows.py).

One :class:`FlowRun` is a flow server on the fake internet and a client process in a private
subnet (:mod:`agent.lab.flowtool`) with a given number of flows of each kind; :meth:`FlowRun.finish`
stops both and judges every flow. The private host gets a second address for the remapped flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab import flowtool
from agent.lab.localgroup import stop_process
from agent.lab.netlab import INET_IP, NetLab, sh


def second_address(lab: NetLab, host: int) -> str:
    """A second address of private host ``host`` (idempotent): the remapped flows come from it."""
    addr = f"10.0.{1 + host}.11"
    ns = lab.topo.priv_ns(host)
    if addr not in sh("ip", "-n", ns, "-4", "addr", "show", "dev", "eth0").stdout:
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
    return addr


@dataclass
class FlowRun:
    lab: NetLab
    host: int
    kinds: dict[str, int]
    seconds: float = 300.0
    first_port: int = 20000
    name: str = "flows"
    spec: list[tuple[str, str, str, int]] = field(default_factory=list)
    server: subprocess.Popen[str] | None = None
    client: subprocess.Popen[str] | None = None

    def start(self, ready_timeout: float = 20.0) -> FlowRun:
        lab, host = self.lab, self.host
        addrs = [lab.topo.priv_ip(host), second_address(lab, host)]
        self.spec = flowtool.plan(self.kinds, addrs, self.first_port)
        wd = lab.workdir
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", lab.topo.inet, sys.executable, "-m", "agent.lab.flowtool", "serve",
             "--address", INET_IP, "--seconds", str(self.seconds + 30), "--out", str(wd / f"{self.name}-server.json")],
            stdout=subprocess.PIPE, stderr=open(wd / f"{self.name}-server.log", "ab"), text=True,  # noqa: SIM115
        )  # fmt: skip
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the flow server did not start (see {wd}/{self.name}-server.log)")
        self.client = subprocess.Popen(
            ["ip", "netns", "exec", lab.topo.priv_ns(host), sys.executable, "-m", "agent.lab.flowtool", "clients",
             "--server", INET_IP, "--spec", json.dumps(self.spec), "--seconds", str(self.seconds),
             "--out", str(wd / f"{self.name}-clients.json")],
            stdout=subprocess.PIPE, stderr=open(wd / f"{self.name}-clients.log", "ab"), text=True,  # noqa: SIM115
        )  # fmt: skip
        assert self.client.stdout is not None
        deadline = time.monotonic() + ready_timeout
        line = self.client.stdout.readline()  # bounded: the client exits after `seconds` at the latest
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the flows did not all answer (see {wd}/{self.name}-clients.log)")
        return self

    def finish(self, alive: float = 1.5) -> dict[str, Any]:
        """Stop both ends; every flow's fate (:func:`agent.lab.flowtool.verdict`) and the raw reports."""
        end = time.time()
        self.stop()
        wd = self.lab.workdir
        flows = json.loads((wd / f"{self.name}-clients.json").read_text())
        server = json.loads((wd / f"{self.name}-server.json").read_text())
        return {**flowtool.verdict(flows, server, end, alive), "flows": flows, "server": server}

    def stop(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None:
                stop_process(proc, timeout=10)


def entries(lab: NetLab, nat: int, table: int) -> list[str]:
    """NAT ``nat``'s conntrack entries of route table ``table``'s subnet (save lines)."""
    out = lab.topo.nat_exec(nat, "conntrack", "-L", "-o", "save", "-s", lab.topo.private_subnet(table), check=False)
    return [ln for ln in out.stdout.splitlines() if ln.startswith("-A ")]


def survived_percent(verdict: dict[str, Any]) -> dict[str, float]:
    return {k: round(100.0 * v["survived"] / v["flows"], 1) for k, v in verdict["kinds"].items() if v["flows"]}


def write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))
