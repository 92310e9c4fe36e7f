"""A lab stand-in for EC2's instance metadata service (IMDSv2), one per lab NAT namespace.

``python -m agent.lab.imds --instance-id I --region R --az Z`` serves, on 169.254.169.254:80
inside the namespace it runs in, what an EC2 instance with an instance profile sees: a session
token (PUT /latest/api/token), the identity (instance-id, placement/region,
placement/availability-zone), its interface's subnet (mac, network/interfaces/macs/<mac>/subnet-id)
and role credentials (iam/security-credentials/<role>). The
agents under systemd read their identity and credentials from it, as on EC2: the shipped unit
passes no environment, and moto does not check the dummy keys. Requests without a token get
401, as IMDSv2 with ``HttpTokens: required`` answers. It exits when its parent is gone.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

from agent.lab.stubserver import serve_until_orphaned

ADDRESS = "169.254.169.254"
ROLE = "nat-ha-lab"


MAC = "02:00:00:00:00:01"


def make_handler(
    instance_id: str, region: str, az: str, lifecycle: str = "", subnet: str = "subnet-lab1"
) -> type[BaseHTTPRequestHandler]:
    """``lifecycle``: a file whose text is served as autoscaling/target-lifecycle-state (absent: 404,
    as for an instance in no Auto Scaling group); a test writes "Terminated" into it."""
    tokens: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self._send(400, "bad request")
                return
            token = secrets.token_urlsafe(24)
            tokens.add(token)
            self._send(200, token)

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                self._send(401, "unauthorized")
                return
            now = datetime.now(timezone.utc)
            meta = {
                "/latest/meta-data/instance-id": instance_id,
                "/latest/meta-data/placement/region": region,
                "/latest/meta-data/placement/availability-zone": az,
                "/latest/meta-data/mac": MAC,
                f"/latest/meta-data/network/interfaces/macs/{MAC}/subnet-id": subnet,
                "/latest/meta-data/iam/security-credentials/": ROLE,
                f"/latest/meta-data/iam/security-credentials/{ROLE}": json.dumps(
                    {
                        "Code": "Success",
                        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "Type": "AWS-HMAC",
                        "AccessKeyId": "testing",
                        "SecretAccessKey": "testing",
                        "Token": "testing",
                        "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ),
            }
            body = meta.get(self.path)
            if self.path == "/latest/meta-data/autoscaling/target-lifecycle-state" and lifecycle:
                try:
                    body = open(lifecycle).read().strip()  # noqa: SIM115
                except OSError:
                    body = None
            if body is None:
                self._send(404, "not found")
            else:
                self._send(200, body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.lab.imds", description=__doc__.splitlines()[0])
    p.add_argument("--instance-id", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--az", required=True)
    p.add_argument("--address", default=ADDRESS)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--lifecycle-file", default="", help="serve its text as autoscaling/target-lifecycle-state")
    p.add_argument("--subnet-id", default="subnet-lab1", help="the subnet of its network interface")
    args = p.parse_args(argv)
    handler = make_handler(args.instance_id, args.region, args.az, args.lifecycle_file, args.subnet_id)
    return serve_until_orphaned("imds", args.address, args.port, handler)


if __name__ == "__main__":
    sys.exit(main())
