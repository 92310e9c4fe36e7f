"""The stack's user data, rendered here as CloudFormation renders it (so the lab runs what ships).

``deploy/cloudformation/generate.py`` embeds ``deploy/bootstrap/nat-ha-bootstrap.sh``, with the
two units of ``deploy/systemd`` and ``deploy/bootstrap/egress_config.py`` in place of its markers,
as an ``Fn::Sub`` string (with one variable of its own, ``EgressTables``). This module
builds the same text (:func:`template_text`, compared with the templates by a test) and resolves
``Fn::Sub`` the way CloudFormation does (:func:`fn_sub`): ``${Name}`` becomes a value, ``${!Name}``
the literal ``${Name}``.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "deploy" / "bootstrap" / "nat-ha-bootstrap.sh"
UNITS = REPO / "deploy" / "systemd"

_SUB = re.compile(r"\$\{(!?)([^}]*)\}")


def template_text(repo: Path = REPO) -> str:
    """The user data as the templates embed it (before Fn::Sub)."""
    script = (repo / "deploy" / "bootstrap" / "nat-ha-bootstrap.sh").read_text()
    units = repo / "deploy" / "systemd"
    setup_unit = (units / "nat-ha-setup.service").read_text()
    unit = (units / "nat-ha.service").read_text()
    helper = (repo / "deploy" / "bootstrap" / "egress_config.py").read_text()
    return script.replace("__SETUP_UNIT__", setup_unit).replace("__UNIT__", unit).replace("__EGRESS_CONFIG__", helper)


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
    version: str = "0.1.0",
    pip_spec: str = "",
    metrics_listen: str = "127.0.0.1:9510",
) -> str:
    """The user data one NAT instance of a stack would run (the stacks' defaults: EgressIp off)."""
    values = {
        "NatHaGroup": group,
        "AWS::Region": region,
        "Table": table,
        "NatHaVersion": version,
        "PipSpec": pip_spec,
        "MetricsListen": metrics_listen,
        "EgressIp": "off",
        "EgressTables": "",
    }
    return fn_sub(template_text(), values)
