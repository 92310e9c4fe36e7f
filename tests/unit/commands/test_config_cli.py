"""Configuration and command-line input: every bad input is one clear line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import cli
from agent.config import ConfigError, load, parse, reference_markdown

GOOD = """
group = "prod"
instance_id = "i-0aaa"
region = "us-east-1"

[[members]]
instance_id = "i-0aaa"
address = "10.0.1.10"
route_tables = ["rtb-0aaa"]

[[members]]
instance_id = "i-0bbb"
address = "10.0.2.10"
route_tables = ["rtb-0bbb"]
"""


DEAD_ENDPOINTS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    c = load(write(tmp_path, GOOD))
    assert c.group == "prod" and len(c.members) == 2
    assert c.timing.lease == 1.0 and c.timing.heartbeat_interval == 0.7 and c.probe.method == "icmp"
    assert c.home_of("rtb-0bbb") == "i-0bbb"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('group = "prod"', "group: required"),
        (
            '[[members]]\ninstance_id = "i-0bbb"\naddress = "10.0.2.10"\nroute_tables = ["rtb-0bbb"]',
            "members: a group needs at least two members (or members_from_tags = true)",
        ),
        ('region = "us-east-1"', None),  # removing region is fine (IMDS)
        ('address = "10.0.2.10"', "members[1].address: required"),
        ('route_tables = ["rtb-0bbb"]', None),
    ],
)
def test_removing_keys(tmp_path: Path, edit: str, expected: str | None) -> None:
    text = GOOD.replace(edit, "", 1)
    if expected is None:
        load(write(tmp_path, text))
        return
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert expected in err.value.problems


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[timing]\nleese = 2.0", "timing.leese: unknown key (did you mean 'lease'?)"),
        ('[timing]\nlease = "fast"', "timing.lease: must be a number, got str 'fast'"),
        ("[timing]\nlease = true", "timing.lease: must be a number, got True"),
        (
            "[timing]\nlease = 0.5",
            "timing.lease: 0.5 s must be >= heartbeat_interval + 2 x store_timeout "
            "(0.7 + 2 x 0.15): one late renewal must not lose the lease",
        ),
        (
            "[probe]\ntimeout = 0.3",
            "probe.timeout: 0.3 s must be below probe.interval (0.2 s): the probe budget must fit one probe round",
        ),
        ('[probe]\nmethod = "udp"', "probe.method: must be one of icmp, tcp, tcp-echo, got 'udp'"),
        ("[probe]\ndown_after = 9", "probe.down_after: 9 cannot exceed probe.window (5)"),
        ('[metrics]\nlisten = "9510"', "metrics.listen: '9510' must be host:port, e.g. 127.0.0.1:9510"),
        ("[timing]\nfailback_hold_down = 0.5", "timing.failback_hold_down: 0.5 s must be >= lease (1.0 s)"),
        (
            "[timing]\nagent_restart_grace = 1.5",
            "timing.agent_restart_grace: 1.5 s must be >= silent_owner_after (2.0 s): "
            "an announced restart must not shorten the silence peers tolerate",
        ),
        (
            "[timing]\nrestart_after = 1",
            "timing.restart_after: 1.0 s must be >= 3 x (lease + margin) (3.30 s): "
            "restarts need stronger evidence than route moves",
        ),
        (
            '[store]\nbilling = "ON_DEMAND"',
            "store.billing: must be one of PAY_PER_REQUEST, PROVISIONED, got 'ON_DEMAND'",
        ),
        ("stores = 1", "stores: unknown key (did you mean 'store'?)"),
        (
            '[self_check]\negress_targets = ["203.0.113.10"]',
            "self_check.egress_targets: '203.0.113.10' must be host:port",
        ),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, extra: str, expected: str) -> None:
    text = (
        GOOD.replace("\n[[members]]", "\n" + extra + "\n\n[[members]]", 1)
        if extra.startswith("[")
        else (extra + "\n" + GOOD)
    )
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert expected in err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('address = "10.0.1.10"', 'address = "ten"').replace('"rtb-0bbb"', '"rtb-0aaa"')
    text = text.replace('region = "us-east-1"', 'region = "us-east-1"\ntiming = { lease = -1 }')
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    problems = err.value.problems
    assert "members[0].address: 'ten' is not an IP address" in problems
    assert (
        "members[1].route_tables: rtb-0aaa is already the home of members[0] (i-0aaa); a route table has one home"
        in problems
    )
    assert "timing.lease: must be >= 0.05, got -1" in problems


def test_a_route_table_listed_twice_for_one_member_is_rejected(tmp_path: Path) -> None:
    """It was accepted silently; the home of a route table must be one clear fact."""
    text = GOOD.replace('route_tables = ["rtb-0aaa"]', 'route_tables = ["rtb-0aaa", "rtb-0aaa"]')
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert err.value.problems == ["members[0].route_tables: rtb-0aaa is listed twice"]


def test_a_route_table_under_two_members_names_the_key(tmp_path: Path) -> None:
    text = GOOD.replace('route_tables = ["rtb-0bbb"]', 'route_tables = ["rtb-0bbb", "rtb-0aaa"]')
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert err.value.problems == [
        "members[1].route_tables: rtb-0aaa is already the home of members[0] (i-0aaa); a route table has one home"
    ]


@pytest.mark.parametrize("key", ["instance_id", "probe.method", "metrics.listen", "store.table", "timing.lease"])
def test_a_huge_value_is_cut_and_echoed_once(tmp_path: Path, key: str) -> None:
    """A 5000-character value was echoed in full (instance_id: in two lines); now once, cut to 60 characters."""
    huge = "i-" + "x" * 5000
    if key == "instance_id":
        text = GOOD.replace('instance_id = "i-0aaa"\nregion', f'instance_id = "{huge}"\nregion', 1)
    else:
        section, _, name = key.partition(".")
        text = GOOD.replace("\n[[members]]", f'\n[{section}]\n{name} = "{huge}"\n\n[[members]]', 1)
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    problems = err.value.problems
    mine = [p for p in problems if p.startswith(f"{key}:")]
    assert len(mine) == 1, problems
    assert "..." in mine[0] and len(mine[0]) < 160, mine[0]
    assert sum(p.count("x" * 40) for p in problems) == 1, problems  # echoed once, in that line


def test_check_config_prints_effective_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["check-config", "--config", str(write(tmp_path, GOOD))], capsys)
    assert code == 0 and err == ""
    assert "heartbeat_interval = 0.7" in out and 'instance_id = "i-0bbb"' in out


def test_check_config_reports_each_problem_on_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD + "\n[probe]\nmethod = 'udp'\ninterval = 'x'\n")
    code, out, err = run_cli(["check-config", "--config", str(path)], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert f"{path}: probe.method: must be one of icmp, tcp, tcp-echo, got 'udp'" in lines
    assert f"{path}: probe.interval: must be a number, got str 'x'" in lines
    assert lines[-1] == "2 problem(s) found"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "no such file"),
        ("dir", "is a directory"),
        ("badtoml", "not valid TOML"),
        ("binary", "cannot read"),
    ],
)
def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    if setup == "dir":
        path.mkdir()
    elif setup == "badtoml":
        path.write_text("group = \n")
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00group")
    code, _out, err = run_cli(["check-config", "--config", str(path)], capsys)
    assert code == 2 and expected in err and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"{path}: ") and first.count(str(path)) == 1, first  # the path once, not twice


def test_reference_documents_every_key() -> None:
    ref = reference_markdown()
    for key in ("`group`", "`timing.lease`", "`probe.method`", "`[[members]].route_tables`", "`metrics.listen`"):
        assert key in ref


toml_scalars = st.one_of(
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
)
sections = st.sampled_from(["", "timing", "probe", "store", "self_check", "metrics", "log", "ec2", "nonsense"])
keys = st.sampled_from(
    [
        "lease",
        "interval",
        "group",
        "table",
        "method",
        "listen",
        "window",
        "x",
        "instance_id",
        "members",
        "down_after",
        "store_timeout",
        "egress_targets",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(sections, st.dictionaries(keys, toml_scalars, max_size=4), max_size=4))
def test_random_configs_never_crash(raw: dict[str, dict[str, object]]) -> None:
    data: dict[str, object] = {}
    for section, values in raw.items():
        if section:
            data[section] = values
        else:
            data.update(values)
    try:
        parse(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p and ": " in p for p in exc.problems)


# Commands that would act on this host or start long runs (setup-nat changes the host's firewall,
# demo runs for half a minute, init-table creates a table) are exercised by their own tests.
@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "agent",
                "check-config",
                "status",
                "drain",
                "switchover",
                "--config",
                "/nonexistent",
                "--route-table",
                "rtb-x",
                "--to",
                "i-1",
                "--wait",
                "-3",
                "--nats",
                "9",
                "--bogus",
                "--billing",
                "X",
                "--timeout",
                "1",
                "--instance",
                "nope",
                "--once",
                "--json",
                "",
            ]
        ),
        max_size=6,
    )
)
def test_random_command_lines_never_trace(argv: list[str]) -> None:
    import contextlib
    import io

    err = io.StringIO()
    saved = {k: os.environ.get(k) for k in DEAD_ENDPOINTS}
    os.environ.update(DEAD_ENDPOINTS)  # whatever a command line reaches, it stays on loopback
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code in (0, 1, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_subprocess_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    """The real executable, as a user runs it."""
    cases = [
        ["check-config", "--config", str(tmp_path / "none.toml")],
        ["agent", "--config", str(tmp_path / "none.toml")],
        ["switchover", "--route-table", "bad", "--to", "i-1", "--config", str(write(tmp_path, GOOD))],
        ["demo", "--nats", "9"],
        ["nonsense"],
    ]
    env = {**os.environ, **DEAD_ENDPOINTS}
    for argv in cases:
        done = subprocess.run(
            [sys.executable, "-m", "agent.commands.cli", *argv], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.strip(), argv
