"""A small, pure IAM policy evaluator for tests (identity policies only).

Supports what nat-ha's policies use and a little more: ``Effect`` Allow/Deny (an
explicit Deny wins, default deny), ``Action``/``NotAction`` and ``Resource``/``NotResource``
with ``*`` and ``?`` wildcards (actions case-insensitive), the condition operators
``StringEquals``, ``StringNotEquals``, ``StringLike``, ``StringNotLike`` and the set operators
``ForAllValues:StringEquals`` / ``ForAnyValue:StringEquals`` over multi-valued keys such as
``aws:TagKeys`` (``...IfExists`` is rejected). A condition key missing from the request context
fails a positive match, as in IAM; ``ForAllValues`` over a missing key matches (IAM's rule, why
it is paired with a positive key). Policy variables in condition values (``${ec2:SourceInstanceARN}``)
are resolved from the request context when evaluated; an unresolvable one matches nothing.
``render`` fills ``${Name}`` placeholders the way CloudFormation's ``Fn::Sub`` does (``${!Name}``
stays a literal ``${Name}``), so the same JSON serves both forms.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

_SUPPORTED = {
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "ForAllValues:StringEquals",
    "ForAnyValue:StringEquals",
}
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:/_-]+)\}")


class PolicyError(Exception):
    """The policy uses something this evaluator does not understand."""


@dataclass(frozen=True)
class Request:
    action: str  # "ec2:ReplaceRoute"
    resource: str  # ARN or "*"
    # "ec2:ResourceTag/nat-ha:group" -> "g"; multi-valued keys (aws:TagKeys) -> a list
    context: dict[str, str | list[str]] = field(default_factory=dict)


def render(node: Any, values: dict[str, str]) -> Any:
    """Replace every ``${Name}`` in strings of a JSON tree; an unknown name is an error."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1).startswith("!"):
                return "${" + m.group(1)[1:] + "}"  # Fn::Sub's escape: a literal ${...} (an IAM variable)
            if m.group(1) not in values:
                raise PolicyError(f"no value for placeholder ${{{m.group(1)}}}")
            return values[m.group(1)]

        return re.sub(r"\$\{(!?[A-Za-z0-9:]+)\}", sub, node)
    if isinstance(node, list):
        return [render(v, values) for v in node]
    if isinstance(node, dict):
        return {k: render(v, values) for k, v in node.items()}
    return node


def _list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _glob(pattern: str, value: str, *, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _resolve(value: str, context: dict[str, str | list[str]]) -> str | None:
    """Fill IAM policy variables from the request; None when one cannot be resolved."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        found = next((v for k, v in context.items() if k.lower() == m.group(1).lower()), None)
        if not isinstance(found, str):
            missing = True
            return ""
        return found

    out = _VARIABLE.sub(sub, value)
    return None if missing else out


def _condition_ok(condition: dict[str, dict[str, Any]], context: dict[str, str | list[str]]) -> bool:
    for op, block in condition.items():
        if op not in _SUPPORTED:
            raise PolicyError(f"condition operator {op} not supported")
        for key, wanted in block.items():
            found = next((v for k, v in context.items() if k.lower() == key.lower()), None)
            values = [r for r in (_resolve(v, context) for v in _list(wanted)) if r is not None]
            if op.startswith("For"):
                items = [] if found is None else _list(found)
                ok = all(i in values for i in items) if op.startswith("ForAll") else any(i in values for i in items)
                if not ok:
                    return False
                continue
            actual = found if isinstance(found, str) else None
            if op == "StringEquals":
                ok = actual is not None and actual in values
            elif op == "StringLike":
                ok = actual is not None and any(fnmatch.fnmatchcase(actual, v) for v in values)
            elif op == "StringNotEquals":
                ok = actual is None or actual not in values
            else:  # StringNotLike
                ok = actual is None or not any(fnmatch.fnmatchcase(actual, v) for v in values)
            if not ok:
                return False
    return True


def statement_matches(stmt: dict[str, Any], req: Request) -> bool:
    """True if one statement applies to the request (whatever its effect)."""
    if "Principal" in stmt or "NotPrincipal" in stmt:
        raise PolicyError("resource policies (Principal) not supported")
    if "Action" in stmt:
        action_ok = any(_glob(a, req.action, ignore_case=True) for a in _list(stmt["Action"]))
    elif "NotAction" in stmt:
        action_ok = not any(_glob(a, req.action, ignore_case=True) for a in _list(stmt["NotAction"]))
    else:
        raise PolicyError("statement without Action or NotAction")
    if not action_ok:
        return False
    if "Resource" in stmt:
        res_ok = any(_glob(r, req.resource, ignore_case=False) for r in _list(stmt["Resource"]))
    elif "NotResource" in stmt:
        res_ok = not any(_glob(r, req.resource, ignore_case=False) for r in _list(stmt["NotResource"]))
    else:
        raise PolicyError("statement without Resource or NotResource")
    return res_ok and _condition_ok(stmt.get("Condition", {}), req.context)


def allowed(policy: dict[str, Any], req: Request) -> bool:
    """IAM's rule for one identity policy: explicit Deny > Allow > implicit deny."""
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    decision = False
    for stmt in statements:
        if stmt.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError(f"bad Effect {stmt.get('Effect')!r}")
        if statement_matches(stmt, req):
            if stmt["Effect"] == "Deny":
                return False
            decision = True
    return decision


def granted_actions(policy: dict[str, Any]) -> set[str]:
    """The actions a policy's Allow statements name (wildcards are returned as written)."""
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, dict) else statements
    out: set[str] = set()
    for stmt in statements:
        if stmt.get("Effect") == "Allow":
            if "NotAction" in stmt:
                raise PolicyError("NotAction in an Allow grants almost everything")
            out |= set(_list(stmt["Action"]))
    return out
