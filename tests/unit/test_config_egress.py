"""``egress_ip = "follow"``: the [[egress.tables]] config, its checks (one line per problem, naming the key)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import cli
from agent.config import ConfigError, EgressTable, effective_toml, egress_problems, load, parse, reference_markdown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GOOD = """
group = "prod"
instance_id = "i-a"
region = "us-east-1"
egress_ip = "follow"

[[members]]
instance_id = "i-a"
address = "10.0.1.10"
eni = "eni-a"
route_tables = ["rtb-a"]

[[members]]
instance_id = "i-b"
address = "10.0.2.10"
eni = "eni-b"
route_tables = ["rtb-b"]

[[egress.tables]]
route_table = "rtb-a"
allocation_id = "eipalloc-a"
subnets = ["10.0.11.0/24"]
addresses = { "i-a" = "10.0.1.21", "i-b" = "10.0.2.21" }

[[egress.tables]]
route_table = "rtb-b"
allocation_id = "eipalloc-b"
subnets = ["10.0.12.0/24", "10.0.13.0/24"]
addresses = { "i-a" = "10.0.1.22", "i-b" = "10.0.2.22" }
"""


def raw() -> dict[str, Any]:
    return copy.deepcopy(tomllib.loads(GOOD))


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse(data)
    return exc.value.problems


def test_good_config_loads() -> None:
    c = parse(raw())
    assert c.egress_follow and c.egress_order == "route-first"
    assert c.egress()["rtb-a"] == EgressTable(
        "rtb-a", "eipalloc-a", ("10.0.11.0/24",), (("i-a", "10.0.1.21"), ("i-b", "10.0.2.21"))
    )
    assert c.egress()["rtb-b"].address("i-b") == "10.0.2.22"
    assert c.egress()["rtb-b"].address("i-z") == ""


def test_egress_off_is_the_default_and_ignores_the_tables() -> None:
    data = raw()
    del data["egress_ip"]
    c = parse(data)
    assert c.egress_ip == "off" and c.egress() == {} and len(c.egress_tables) == 2


def test_effective_config_round_trips() -> None:
    c = parse(raw())
    again = parse(tomllib.loads(effective_toml(c)))
    assert again == c


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(egress_ip="on"), "egress_ip: must be one of off, follow, got 'on'"),
        (lambda d: d.update(egress_order="both"), "egress_order: must be one of route-first, address-first"),
        (lambda d: d["members"][1].pop("eni"), 'members[1].eni: required with egress_ip = "follow"'),
        (
            lambda d: d["egress"]["tables"].pop(),
            'egress.tables: no entry for rtb-b (home of i-b); egress_ip = "follow"',
        ),
        (
            lambda d: d["egress"]["tables"][1].update(route_table="rtb-a"),
            "egress.tables[1].route_table: rtb-a is listed twice",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(route_table="rtb-zz"),
            "egress.tables[1].route_table: rtb-zz is not a route table of any member",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(allocation_id="eipalloc-a"),
            "egress.tables[1].allocation_id: eipalloc-a is also the Elastic IP of egress.tables[0]",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(allocation_id="eip-1"),
            "egress.tables[1].allocation_id: 'eip-1' is not an Elastic IP allocation id",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(subnets=[]),
            'egress.tables[1].subnets: required with egress_ip = "follow"',
        ),
        (
            lambda d: d["egress"]["tables"][1].update(subnets=["10.0.12.7/24"]),
            "egress.tables[1].subnets: '10.0.12.7/24' is not a subnet (CIDR)",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(subnets=["10.0.11.128/25"]),
            "egress.tables[1].subnets: 10.0.11.128/25 overlaps 10.0.11.0/24 of rtb-a",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].pop("i-b"),
            "egress.tables[1].addresses: no address for member i-b",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"i-c": "10.0.3.1"}),
            "egress.tables[1].addresses: i-c is not a member",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"i-a": "10.0.1.21"}),
            "egress.tables[1].addresses: i-a's address 10.0.1.21 is also its address for rtb-a",
        ),
        (
            # Issue 17, finding 4: the home's Elastic IP on its primary address took the NAT's own way to
            # AWS with it when it moved: silent, its tables moved, and (before the fix) stopped.
            lambda d: d["egress"]["tables"][0]["addresses"].update({"i-a": "10.0.1.10"}),
            "egress.tables[0].addresses: i-a's address 10.0.1.10 is its primary address",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"i-a": "10.0.2.21"}),
            "egress.tables[1].addresses: i-a's address 10.0.2.21 belongs to i-b",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"i-a": "10.0.11.9"}),
            "egress.tables[1].addresses: i-a's address 10.0.11.9 lies inside rtb-a's private subnet 10.0.11.0/24",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"i-a": "ten"}),
            "egress.tables[1].addresses: i-a = 'ten' is not an IP address",
        ),
        (
            lambda d: d["egress"]["tables"][1]["addresses"].update({"a": "10.0.1.99"}),
            "egress.tables[1].addresses: 'a' is not an instance id",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(addresses=["10.0.1.1"]),
            "egress.tables[1].addresses: must be a table, got list",
        ),
        (
            lambda d: d["egress"]["tables"][1].update(addresses={"i-a": 3}),
            "egress.tables[1].addresses: every value must be a string",
        ),
        (lambda d: d["egress"]["tables"][1].pop("allocation_id"), "egress.tables[1].allocation_id: required"),
        (lambda d: d["egress"]["tables"][1].update(eip="x"), "egress.tables[1].eip: unknown key"),
        (lambda d: d["egress"].update(table=[]), "egress.table: unknown key (did you mean 'tables'?)"),
        (lambda d: d.update(egress={"tables": {"route_table": "rtb-a"}}), "egress.tables: must be an array of tables"),
        (lambda d: d.update(egress=[1]), "egress: must be a table of [[egress.tables]] entries, got list"),
    ],
)
def test_each_problem_is_one_line_naming_its_key(edit: Any, expected: str) -> None:
    data = raw()
    edit(data)
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)


def test_with_members_from_tags_the_member_checks_wait_for_discovery() -> None:
    data = raw()
    data["members_from_tags"] = True
    members = data.pop("members")
    c = parse(data)  # the member checks cannot run yet: nothing is known about the members
    assert c.members == () and egress_problems(c) == []
    from agent.config import Member, with_discovered

    found = (Member("i-a", "10.0.1.10", ("rtb-a",), eni="eni-a"), Member("i-b", "10.0.2.10", ("rtb-b",)))
    assert egress_problems(with_discovered(c, members=found)) == [
        'members (i-b).eni: required with egress_ip = "follow" (its Elastic IPs sit on this interface)'
    ]
    assert members  # (the same tables with the configured members pass: test_good_config_loads)


def test_check_config_exits_2_with_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = GOOD.replace('eni = "eni-b"\n', "").replace('"i-b" = "10.0.2.22"', '"i-b" = "10.0.12.5"')
    path = tmp_path / "config.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError):
        load(path)
    code = cli.main(["check-config", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "members[1].eni: required" in err and "lies inside rtb-b's private subnet 10.0.12.0/24" in err


def test_reference_documents_the_egress_keys() -> None:
    ref = reference_markdown()
    for key in ("`egress_ip`", "`egress_order`", "`[[egress.tables]].allocation_id`", "`[[egress.tables]].addresses`"):
        assert key in ref
    assert "| `[[egress.tables]].addresses` | a table | `{}` |" in ref  # with members_from_tags: derived


values = st.one_of(
    st.text(max_size=12),
    st.integers(-3, 3),
    st.lists(st.text(max_size=14), max_size=3),
    st.dictionaries(
        st.sampled_from(["i-a", "i-b", "x", ""]), st.one_of(st.text(max_size=12), st.integers()), max_size=3
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["route_table", "allocation_id", "subnets", "addresses", "bogus"]), values, max_size=5
        ),
        max_size=3,
    ),
    st.sampled_from(["off", "follow", "x"]),
)
def test_random_egress_tables_never_crash(tables: list[dict[str, Any]], mode: str) -> None:
    data = raw()
    data["egress_ip"] = mode
    data["egress"] = {"tables": tables}
    try:
        parse(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p and ": " in p for p in exc.problems)
