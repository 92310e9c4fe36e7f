"""[conntrack_sync]'s config rules: off by default, refused without egress_ip = "follow", one line per problem."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import ConfigError, parse
from tests.unit.test_config_egress import raw


def with_sync(**keys: Any) -> dict[str, Any]:
    data = raw()
    data["conntrack_sync"] = {"enabled": True, **keys}
    return data


def test_off_by_default_and_on_with_follow() -> None:
    assert not parse(raw()).conntrack_sync.enabled
    on = parse(with_sync()).conntrack_sync
    assert on.enabled and on.port == 9511 and on.key_file == "/etc/nat-ha/ctsync.key"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(egress_ip="off"), 'conntrack_sync.enabled: needs egress_ip = "follow"'),
        (lambda d: d["conntrack_sync"].update(trusted_networks=["10.0.0.1/8"]), "conntrack_sync.trusted_networks:"),
        (lambda d: d["conntrack_sync"].update(key_file="ctsync.key"), "conntrack_sync.key_file: 'ctsync.key' must"),
        (lambda d: d["conntrack_sync"].update(port=9510), "conntrack_sync.port: 9510 is also metrics.listen's port"),
        (lambda d: d["conntrack_sync"].update(quiet_after=99.0), "conntrack_sync.quiet_after: 99.0 s must be <="),
        (lambda d: d["conntrack_sync"].update(keyfile="x"), "conntrack_sync.keyfile: unknown key"),
    ],
)
def test_each_problem_is_one_line_naming_its_key(edit: Any, expected: str) -> None:
    data = with_sync()
    edit(data)
    with pytest.raises(ConfigError) as exc:
        parse(data)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems
    assert all("\n" not in p for p in exc.value.problems)
