"""The reference policy: AWS's nat_monitor.sh (2013) re-done in Python, for bench/failover.py.

Runs in one NAT namespace instead of the agent. Same algorithm and defaults as the
script: ``ping -c 3 -W 1`` the peer; if no reply, ReplaceRoute the peer's route table to
myself (no arbiter), then stop the peer, wait, start it, wait; otherwise sleep 2 s.
At start it points its own route table at itself (the script's fail-back). The only
change: the waits after stop/start default to 1 s / 3 s instead of 60 s / 300 s, so
that trials fit a benchmark (they do not change the outage, only the restart pace).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="nat_monitor.sh's policy (reference for bench/failover.py)")
    p.add_argument("--endpoint", required=True, help="EC2 endpoint URL (moto)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--me", required=True, help="my instance id")
    p.add_argument("--my-rt", required=True, help="my route table")
    p.add_argument("--peer", required=True, help="peer instance id")
    p.add_argument("--peer-ip", required=True, help="peer private address")
    p.add_argument("--peer-rt", required=True, help="peer route table")
    p.add_argument("--num-pings", type=int, default=3)
    p.add_argument("--ping-timeout", type=int, default=1)
    p.add_argument("--wait-between-pings", type=float, default=2.0)
    p.add_argument("--wait-for-stop", type=float, default=1.0, help="script default 60")
    p.add_argument("--wait-for-start", type=float, default=3.0, help="script default 300")
    p.add_argument("--max-seconds", type=float, default=3600.0)
    a = p.parse_args(argv)

    import botocore.config
    import botocore.session

    ec2: Any = botocore.session.get_session().create_client(
        "ec2",
        region_name=a.region,
        endpoint_url=a.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
    )

    def log(msg: str) -> None:
        print(f"{time.time():.3f} {msg}", flush=True)

    def replace(rt: str) -> None:
        try:
            ec2.replace_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0", InstanceId=a.me)
        except Exception:
            ec2.create_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0", InstanceId=a.me)
        log(f"route {rt} -> {a.me}")

    deadline = time.monotonic() + a.max_seconds
    log("starting: taking my own route table")
    try:
        replace(a.my_rt)
    except Exception as exc:
        log(f"could not take my route table: {exc}")
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ping", "-n", "-c", str(a.num_pings), "-W", str(a.ping_timeout), a.peer_ip],
            capture_output=True,
            text=True,
            timeout=a.num_pings * (a.ping_timeout + 1) + 5,
            check=False,
        ).stdout
        if out.count("time=") > 0:
            time.sleep(a.wait_between_pings)
            continue
        log(f"peer {a.peer} did not answer: taking over {a.peer_rt}")
        try:
            replace(a.peer_rt)
            stopping = False
            nat_healthy = False
            while not nat_healthy and time.monotonic() < deadline:
                data = ec2.describe_instances(InstanceIds=[a.peer])
                state = data["Reservations"][0]["Instances"][0]["State"]["Name"]
                if state == "stopped":
                    log(f"starting {a.peer}")
                    ec2.start_instances(InstanceIds=[a.peer])
                    nat_healthy = True
                    time.sleep(a.wait_for_start)
                else:
                    if not stopping:
                        log(f"stopping {a.peer}")
                        ec2.stop_instances(InstanceIds=[a.peer])
                        stopping = True
                    time.sleep(a.wait_for_stop)
        except Exception as exc:
            log(f"EC2 error: {exc}")
            time.sleep(a.wait_between_pings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
