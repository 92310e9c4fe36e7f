"""IMDSv2: this instance's id, region and AZ when the config leaves them out."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_ENDPOINT = "http://169.254.169.254"


class ImdsError(Exception):
    pass


def _endpoint() -> str:
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def fetch(paths: list[str], timeout: float = 1.0) -> dict[str, str]:
    """Read metadata paths with an IMDSv2 session token (bounded: one try, short timeouts)."""
    base = _endpoint()
    try:
        req = urllib.request.Request(
            f"{base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            token = resp.read().decode()
        out = {}
        for path in paths:
            req = urllib.request.Request(f"{base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                out[path] = resp.read().decode().strip()
        return out
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ImdsError(f"IMDSv2 at {base} did not answer ({exc})") from exc


def identity(timeout: float = 1.0) -> tuple[str, str, str]:
    """(instance id, region, availability zone)."""
    data = fetch(["instance-id", "placement/region", "placement/availability-zone"], timeout)
    return data["instance-id"], data["placement/region"], data["placement/availability-zone"]
