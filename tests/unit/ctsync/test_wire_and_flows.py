"""The sync's pure parts: conntrack save lines (agent.host.flows), the wire format and the plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ctsync import plan, wire
from agent.host import flows

# Lines as conntrack 1.4.7 prints them (tests/lab reads the real tool's output too).
TCP = (
    "-A -t 431999 -u SEEN_REPLY,ASSURED -s 10.0.1.10 -d 203.0.113.10 -r 203.0.113.10 -n 10.0.100.21 -p tcp "
    "--sport 51542 --dport 8000 --reply-port-src 8000 --reply-port-dst 51542 --state ESTABLISHED"
)
UDP_EVENT = (
    "-U -t 30 -u SEEN_REPLY -s 10.0.1.10 -d 203.0.113.10 -r 203.0.113.10 -n 10.0.100.21 -p udp --sport 54818 "
    "--dport 8001 --reply-port-src 8001 --reply-port-dst 1025"
)
USERSPACE_END = UDP_EVENT.replace("-U ", "-D ", 1) + " [USERSPACE] portid=2748447411 progname=conntrack"
# An end event of a UDP flow: the tool prints no timeout then.
UDP_END = (
    "-D -u SEEN_REPLY -s 10.0.1.10 -d 203.0.113.10 -r 203.0.113.10 -n 10.0.100.21 -p udp --sport 37748 "
    "--dport 8001 --reply-port-src 8001 --reply-port-dst 37748"
)


def test_parse_reads_the_tools_lines() -> None:
    f = flows.parse(TCP)
    assert f == flows.Flow("A", "tcp", "10.0.1.10", "203.0.113.10", 51542, 8000, "10.0.100.21", 51542, 431999,
                           "SEEN_REPLY,ASSURED", "ESTABLISHED")  # fmt: skip
    assert f.established
    u = flows.parse(UDP_EVENT + "\n")
    assert u is not None and u.op == "A" and u.nat_port == 1025 and u.established and not u.userspace
    d = flows.parse(USERSPACE_END)
    assert d is not None and d.op == "D" and d.userspace
    e = flows.parse(UDP_END)
    assert e is not None and e.op == "D" and e.timeout == 0 and e.nat_port == 37748


@pytest.mark.parametrize(
    "line",
    [
        TCP.replace("-n 10.0.100.21", "-q 10.0.1.10"),  # not source-NATed
        TCP.replace("-r 203.0.113.10", "-r 198.51.100.1"),  # destination NAT
        TCP.replace("-p tcp", "-p sctp"),
        TCP.replace("ESTABLISHED", "BOGUS"),
        TCP.replace("--sport 51542", "--sport 70000"),
        TCP.replace("-s 10.0.1.10", "-s 10.0.1.300"),
        TCP.replace("-u SEEN_REPLY,ASSURED", "-u SEEN_REPLY,ASSURED -w 3"),  # a zone
        TCP + " ; rm -rf /",
        TCP.replace(" -t 431999", " -t x"),
        UDP_EVENT + " --state ESTABLISHED",
        "",
    ],
)
def test_parse_refuses_what_it_does_not_sync(line: str) -> None:
    assert flows.parse(line) is None


def test_render_rewrites_the_nat_address_and_keeps_the_port() -> None:
    f = flows.parse(TCP)
    assert f is not None
    line = f.render("10.0.101.21")
    assert line == TCP.replace("-n 10.0.100.21", "-n 10.0.101.21")
    again = flows.parse(line)
    assert again is not None and again.nat == "10.0.101.21" and again.nat_port == f.nat_port
    assert f.render("x", timeout=10**9).split()[2] == str(flows.MAX_TIMEOUT)


ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@given(
    st.sampled_from(["tcp", "udp"]), ips, ips, ips, st.integers(1, 65535), st.integers(1, 65535),
    st.integers(1, 65535), st.integers(0, flows.MAX_TIMEOUT),
)  # fmt: skip
def test_render_and_parse_round_trip(
    proto: str, src: str, dst: str, nat: str, sport: int, dport: int, port: int, timeout: int
) -> None:
    state = "ESTABLISHED" if proto == "tcp" else ""
    f = flows.Flow("A", proto, src, dst, sport, dport, nat, port, timeout, "SEEN_REPLY", state)
    assert flows.parse(f.render(nat)) == f


def test_reconcile_deletes_stale_first_replaces_moved_ports_and_refreshes_timeouts() -> None:
    f = flows.parse(TCP)
    assert f is not None
    mine = "10.0.101.21"
    gone = flows.Flow("A", "tcp", "10.0.1.99", "203.0.113.10", 1, 8000, mine, 1, 100, "SEEN_REPLY", "ESTABLISHED")
    moved = flows.Flow("A", "tcp", "10.0.1.10", "203.0.113.10", 51542, 8000, mine, 9999, 100, "", "ESTABLISHED")
    plan, n = flows.reconcile({gone.key: gone, moved.key: moved}, [f], mine)
    assert n == 1
    assert plan == flows.Plan([gone, moved], [], [f._replace(nat=mine)])
    kept = flows.parse(f.render(mine))
    assert kept is not None
    assert flows.reconcile({f.key: kept}, [f], mine) == (flows.Plan([], [], []), 1)
    old = kept._replace(timeout=100)
    assert flows.reconcile({f.key: old}, [f], mine)[0].timeouts == [(f, f.timeout)]
    assert flows.reconcile({f.key: old}, [f], mine, min_timeout=10**9)[0].timeouts == [(f, flows.MAX_TIMEOUT)]


def test_apply_changes_add_only_never_changes_or_ends_an_entry() -> None:
    f = flows.parse(TCP)
    assert f is not None
    end = flows.Flow("D", "udp", "10.0.1.10", "203.0.113.10", 1, 53, "10.0.100.21", 1)
    assert flows.apply_changes([f, end], "n") == flows.Plan([f, end], [], [f._replace(nat="n")])
    assert flows.apply_changes([f, end], "n", add_only=True) == flows.Plan([], [], [f._replace(nat="n")])


def test_subnets_find_the_table() -> None:
    s = flows.Subnets({"rtb-a": ("10.0.1.0/24", "10.0.3.0/24"), "rtb-b": ("10.0.2.0/24",)})
    assert [s.table_of(a) for a in ("10.0.1.7", "10.0.3.1", "10.0.2.255", "10.0.4.1", "nope")] == [
        "rtb-a", "rtb-a", "rtb-b", "", "",
    ]  # fmt: skip


# ----------------------------------------------------------------- wire
KEY = b"s" * 32


def _pair() -> tuple[wire.Sealer, wire.Opener, bytes]:
    hello, cn = wire.hello(KEY, "i-a", "i-b")
    client, server, nonce = wire.read_hello(KEY, hello)
    assert (client, server, nonce) == ("i-a", "i-b", cn)
    welcome, sn = wire.welcome(KEY, client, server, nonce)
    assert wire.read_welcome(KEY, welcome, "i-a", "i-b", cn) == sn
    k = wire.session_key(KEY, cn, sn, "i-a", "i-b")
    return wire.Sealer(k), wire.Opener(k), hello


def test_frames_open_in_order_and_refuse_tampering_replay_and_reordering() -> None:
    sealer, opener, _ = _pair()
    sent = [flows.parse(TCP), flows.parse(UDP_EVENT), flows.parse(UDP_END)]
    payload = wire.encode({"table": "rtb-a"}, sent)
    f1, f2, f3 = (sealer.seal(wire.DELTA, payload) for _ in range(3))
    kind, seq, body = opener.open(f1[4:])
    assert (kind, seq) == (wire.DELTA, 1) and wire.decode(body) == ({"table": "rtb-a"}, sent)
    with pytest.raises(wire.ProtocolError, match="sequence"):
        opener.open(f1[4:])  # replayed
    with pytest.raises(wire.ProtocolError, match="sequence"):
        opener.open(f3[4:])  # f2 dropped
    tampered = bytearray(f2[4:])
    tampered[20] ^= 1
    with pytest.raises(wire.ProtocolError, match="authentication"):
        opener.open(bytes(tampered))
    assert opener.open(f2[4:])[1] == 2


def test_handshake_needs_the_group_key() -> None:
    hello, _ = wire.hello(b"x" * 32, "i-a", "i-b")
    with pytest.raises(wire.ProtocolError, match="authentication"):
        wire.read_hello(KEY, hello)
    with pytest.raises(wire.ProtocolError, match="magic"):
        wire.read_hello(KEY, b"GET / HTTP/1.1\r\n")
    _, cn = wire.hello(KEY, "i-a", "i-b")
    forged, _ = wire.welcome(b"x" * 32, "i-a", "i-b", cn)
    with pytest.raises(wire.ProtocolError, match="authentication"):
        wire.read_welcome(KEY, forged, "i-a", "i-b", cn)
    with pytest.raises(ValueError, match="at least 32"):
        wire.load_key(b"short\n")
    assert wire.load_key(b"  " + KEY + b"\n") == KEY
    with pytest.raises(wire.ProtocolError, match="limit"):
        wire.frame_length((wire.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(wire.ProtocolError):
        wire.decode(b"\x00\x05{bad}")


# ----------------------------------------------------------------- plan
def test_plan_streams_held_tables_to_every_peer_and_a_handed_over_one_to_its_taker() -> None:
    v = plan.View("i-a", {"i-a": "1", "i-b": "2", "i-c": "3"}, {"rtb-a": "i-a", "rtb-b": "i-b"})
    assert plan.streams(v, {}) == {"rtb-a": ["i-b", "i-c"]}
    assert plan.streams(v, {"rtb-c": "i-c", "rtb-a": "i-b"}) == {"rtb-a": ["i-b", "i-c"], "rtb-c": ["i-c"]}


def test_plan_accepts_a_tables_flows_from_its_holder_only() -> None:
    v = plan.View("i-b", {"i-a": "1", "i-b": "2", "i-c": "3"}, {"rtb-a": "i-a", "rtb-b": "i-b"})
    assert plan.accept(v, "rtb-a", "i-a", "") == plan.COPY
    assert plan.accept(v, "rtb-a", "i-c", "") is None  # not its holder
    assert plan.accept(v, "rtb-c", "i-c", "") == plan.COPY  # holder unknown: any member
    assert plan.accept(v, "rtb-b", "i-a", "") is None  # ours
    assert plan.accept(v, "rtb-b", "i-a", "i-a") == plan.ADD_ONLY  # ours, handed over by i-a lately
    assert plan.accept(v, "rtb-a", "i-z", "") is None  # not a member


# ----------------------------------------------------------------- ctnetlink (the real kernel: tests/lab)
def test_ctnetlink_messages_and_answers() -> None:
    import struct

    from agent.host import ctnetlink

    f = flows.Flow("A", "tcp", "10.0.1.10", "203.0.113.10", 51542, 8000, "n", 1)
    m = ctnetlink.delete_message(f, 7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", m)
    assert (length, kind, flags, seq, pid) == (len(m), 0x0102, 1, 7, 0)  # CTNETLINK << 8 | DELETE, a request
    assert m[16:20] == bytes([2, 0, 0, 0])  # nfgenmsg: AF_INET, version 0
    tuple_len, tuple_type = struct.unpack_from("=HH", m, 20)
    assert tuple_type == 1 | 0x8000 and 20 + tuple_len == len(m)  # CTA_TUPLE_ORIG, nested, is the rest
    body = m[24:]
    assert bytes([10, 0, 1, 10]) in body and bytes([203, 0, 113, 10]) in body
    assert struct.pack("!H", 51542) in body and struct.pack("!H", 8000) in body and bytes([6]) in body
    t = ctnetlink.timeout_message(f, 300, 8)
    assert struct.unpack_from("=H", t, 4)[0] == 0x0100 and t.endswith(struct.pack("=HH", 8, 7) + struct.pack("!I", 300))
    answer = struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -2) + m[:16]
    assert ctnetlink.errors(answer + struct.pack("=IHHII", 36, 2, 0, 8, 0) + struct.pack("=i", 0) + m[:16]) == [2, 0]


def test_incoming_parts_free_a_public_port_before_loading_and_end_with_the_stale_ones() -> None:
    mine = "10.0.101.21"

    def flow(src: str, sport: int, port: int, nat: str = mine) -> flows.Flow:
        return flows.Flow("A", "tcp", src, "203.0.113.10", sport, 443, nat, port, 300, "SEEN_REPLY", "ESTABLISHED")

    same = flow("10.0.1.1", 1000, 1000)
    squatter = flow("10.0.1.9", 9, 2000)  # ours, not in the list, holding the public port the list's b needs
    left = flow("10.0.1.8", 8, 3000)  # ours, not in the list, harmless until the end
    incoming = flows.Incoming(mine, {f.key: f for f in (same, squatter, left)})
    b = flow("10.0.1.2", 1001, 2000, nat="10.0.100.21")  # as the holder has it: its own address
    part = incoming.part([same._replace(nat="10.0.100.21"), b])
    assert part == flows.Plan([squatter], [], [b._replace(nat=mine)])  # the squatter goes before b is loaded
    assert incoming.end() == flows.Plan([left], [], []) and incoming.count == 2
