"""IAM as the simulated EC2 applies it: the shipped policy, evaluated against tags as IAM sees them.

Every EC2 call of an agent is checked against ``deploy/iam/nat-ha-policy.json`` (rendered
for the simulated account, evaluated by ``tests/iam_eval.py``) when AWS processes it, so a
condition added to the shipped policy (a stop-by tag on StopInstances, say) is enforced in
the simulator with no change here. Seeds without holder tags (``ec2.holder_tag = false``)
use the same policy with its ``nat-ha:holder`` conditions removed: what such a deployment runs.

Tags reach IAM late (eventual consistency): each tag write becomes visible to IAM a lag after
EC2 applied it (``Scenario.tag_lag``); until then IAM decides on the tags it saw before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.iam_eval import Request, allowed, render

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "iam" / "nat-ha-policy.json"
REGION, ACCOUNT, GROUP = "sim", "000000000000", "sim"
RESOURCE_KINDS = {"rtb-": "route-table", "i-": "instance", "eipalloc-": "elastic-ip", "eni-": "network-interface"}


def resource_arn(resource: str) -> str:
    kind = next((k for p, k in RESOURCE_KINDS.items() if resource.startswith(p)), "resource")
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{resource}"


def _without_holder(node: Any) -> Any:
    """The policy with every condition on the nat-ha:holder tag removed (holder tags off)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if "nat-ha:holder" in k:
                continue
            if k in ("StringEquals", "ForAllValues:StringEquals") and isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if "nat-ha:holder" not in kk and kk != "aws:TagKeys"}
                if not v:
                    continue
            out[k] = _without_holder(v)
        return out
    if isinstance(node, list):
        return [_without_holder(v) for v in node]
    return node


_POLICIES: dict[bool, dict[str, Any]] = {}


def policy(holder_tag: bool) -> dict[str, Any]:
    if holder_tag not in _POLICIES:
        values = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "NatHaGroup": GROUP,
            "NatHaTable": "nat-ha-sim",
        }
        rendered = render(json.loads(POLICY.read_text()), values)
        _POLICIES[holder_tag] = rendered if holder_tag else _without_holder(rendered)
    return _POLICIES[holder_tag]


@dataclass
class TagWrite:
    applied: float  # when EC2 applied it (DescribeRouteTables shows it from then on)
    visible: float  # when IAM sees it
    key: str
    value: str | None  # None: deleted


class Tags:
    """Every resource's tags with their history: as EC2 shows them, and as IAM sees them (lagged)."""

    def __init__(self) -> None:
        self.log: dict[str, list[TagWrite]] = {}

    def write(self, resource: str, key: str, value: str | None, applied: float, visible: float) -> None:
        self.log.setdefault(resource, []).append(TagWrite(applied, visible, key, value))

    def _view(self, resource: str, seen: Any) -> dict[str, str]:
        out: dict[str, tuple[float, str | None]] = {}
        for w in self.log.get(resource, []):
            if seen(w) and (w.key not in out or w.applied >= out[w.key][0]):
                out[w.key] = (w.applied, w.value)
        return {k: v for k, (_, v) in out.items() if v is not None}

    def ec2(self, resource: str, at: float) -> dict[str, str]:
        return self._view(resource, lambda w: w.applied <= at)

    def iam(self, resource: str, at: float) -> dict[str, str]:
        """The tags IAM decides on at ``at``: of the writes it sees, the last applied per key."""
        return self._view(resource, lambda w: w.visible <= at)


def context(tags: dict[str, str], caller_arn: str, extra: dict[str, str | list[str]] | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"ec2:SourceInstanceARN": caller_arn, "aws:ResourceTag/nat-ha:group": GROUP}
    ctx["ec2:ResourceTag/nat-ha:group"] = GROUP  # every resource of the simulated group carries the group tag
    for k, v in tags.items():
        ctx[f"ec2:ResourceTag/{k}"] = v
        ctx[f"aws:ResourceTag/{k}"] = v
    ctx.update(extra or {})
    return ctx


_DECISIONS: dict[tuple[Any, ...], tuple[bool, str]] = {}


def decide(holder_tag: bool, op: str, resources: list[tuple[str, dict[str, str]]], caller_arn: str,
           extra: dict[str, str | list[str]] | None = None) -> tuple[bool, str]:  # fmt: skip
    """Allowed?, and the resource that was refused: every resource a request names must be allowed."""
    frozen_extra = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (extra or {}).items()))
    key = (holder_tag, op, tuple((r, tuple(sorted(t.items()))) for r, t in resources), caller_arn, frozen_extra)
    if key not in _DECISIONS:  # the same requests recur all run long: evaluate each once
        _DECISIONS[key] = _decide(holder_tag, op, resources, caller_arn, extra)
    return _DECISIONS[key]


def _decide(holder_tag: bool, op: str, resources: list[tuple[str, dict[str, str]]], caller_arn: str,
            extra: dict[str, str | list[str]] | None) -> tuple[bool, str]:  # fmt: skip
    pol = policy(holder_tag)
    for resource, tags in resources:
        req = Request(f"ec2:{op}", resource_arn(resource) if resource != "*" else "*", context(tags, caller_arn, extra))
        if not allowed(pol, req):
            return False, resource
    return True, ""
