"""The stack's user data, rendered here as CloudFormation renders it (so the lab runs what ships).

``deploy/cloudformation/generate.py`` embeds ``deploy/bootstrap/nat-ha-bootstrap.sh`` as an
``Fn::Sub`` string (with four variables of its own: ``EgressTables``, ``NatSubnets``, ``NatEips``, ``CtsyncKeySecret``).
This module reads the same text (:func:`template_text`, compared with the templates by a test) and
resolves ``Fn::Sub`` the way CloudFormation does (:func:`fn_sub`): ``${Name}`` becomes a value,
``${!Name}`` the literal ``${Name}``.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SUB = re.compile(r"\$\{(!?)([^}]*)\}")


def template_text(repo: Path = REPO) -> str:
    """The user data as the templates embed it (before Fn::Sub): the bootstrap script itself."""
    return (repo / "deploy" / "bootstrap" / "nat-ha-bootstrap.sh").read_text()


def fn_sub(text: str, values: dict[str, str]) -> str:
    """CloudFormation's ``Fn::Sub`` on ``text``; a name without a value raises KeyError."""

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "${" + m.group(2) + "}"
        return values[m.group(2)]

    return _SUB.sub(one, text)


def names(text: str) -> set[str]:
    """The ``${Name}`` references of ``text`` (what a stack must supply)."""
    return {m.group(2) for m in _SUB.finditer(text) if not m.group(1)}


def render(
    group: str,
    region: str,
    table: str,
    artifact: str,
    sha256: str,
    *,
    stack: str = "nat-ha-lab",
    metrics_listen: str = "127.0.0.1:9510",
    nat_subnets: str = "subnet-lab1,subnet-lab2",
) -> str:
    """The user data one NAT instance of a stack would run (the defaults: EgressIp, ConntrackSync off, no EIPs)."""
    values = {
        "NatHaGroup": group,
        "AWS::Region": region,
        "AWS::StackName": stack,
        "Table": table,
        "NatHaArtifact": artifact,
        "NatHaArtifactSha256": sha256,
        "MetricsListen": metrics_listen,
        "EgressIp": "off",
        "EgressTables": "",
        "NatSubnets": nat_subnets,
        "NatEips": "",
        "ConntrackSync": "off",
        "CtsyncKeySecret": "",
    }
    return fn_sub(template_text(), values)
