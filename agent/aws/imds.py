"""IMDSv2: this instance's id, region, AZ and account when the config leaves them out."""

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
    """Read metadata paths with an IMDSv2 session token (bounded: one try, short timeouts).

    A path is under ``/latest/meta-data/``; one starting with ``/`` is under ``/latest/``.
    """
    base = _endpoint()
    try:
        req = urllib.request.Request(
            f"{base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            token = resp.read().decode()
        out = {}
        for path in paths:
            url = f"{base}/latest/{path[1:]}" if path.startswith("/") else f"{base}/latest/meta-data/{path}"
            req = urllib.request.Request(url, headers={"X-aws-ec2-metadata-token": token})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                out[path] = resp.read().decode().strip()
        return out
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ImdsError(f"IMDSv2 at {base} did not answer ({exc})") from exc


def identity(timeout: float = 1.0) -> tuple[str, str, str]:
    """(instance id, region, availability zone)."""
    data = fetch(["instance-id", "placement/region", "placement/availability-zone"], timeout)
    return data["instance-id"], data["placement/region"], data["placement/availability-zone"]


def account_id(timeout: float = 1.0) -> str:
    """This instance's AWS account (from the instance identity document)."""
    import json

    doc = fetch(["/dynamic/instance-identity/document"], timeout)["/dynamic/instance-identity/document"]
    try:
        return str(json.loads(doc)["accountId"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ImdsError(f"the instance identity document has no accountId ({exc})") from exc


def instance_arn(instance_id: str, region: str, account: str) -> str:
    """The ARN IAM calls ``ec2:SourceInstanceARN`` for requests signed with this instance's role."""
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return f"arn:{partition}:ec2:{region}:{account}:instance/{instance_id}"
