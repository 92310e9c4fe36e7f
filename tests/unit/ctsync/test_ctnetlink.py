"""ctnetlink messages (agent.host.ctnetlink) against messages captured from the real kernel and tool.

ctnetlink_captured.json was recorded on Linux 6.18 with conntrack-tools 1.4.7 in a throwaway network
namespace (its "about" says what was done): the bytes ``conntrack -R`` sent for two save lines, the
kernel's answer to a dump, and the events it multicast. tests/lab/test_ctnetlink.py runs the same
codec against a live kernel.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ctsync import wire
from agent.host import ctnetlink, flows

CAPTURED = json.loads((Path(__file__).parent / "ctnetlink_captured.json").read_text())
TCP_LINE, UDP_LINE = (c["line"] for c in CAPTURED["conntrack_R"])
NAT = "10.0.100.21"
# No per-example deadline: the 2-core machine is shared with labs and simulations (a slow example is not a bug).
SHARED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _flows(hexes: list[str]) -> list[flows.Flow | None]:
    out: list[flows.Flow | None] = []
    for h in hexes:
        data = bytes.fromhex(h)
        out += [ctnetlink.flow_of(data, at, n) for kind, at, n in ctnetlink.messages(data) if kind >> 8 == 1]
    return out


def _line(f: flows.Flow) -> flows.Flow:
    parsed = flows.parse(f.render(f.nat))
    assert parsed is not None
    return parsed


def test_a_create_is_byte_for_byte_what_the_conntrack_tool_sends_but_asks_no_acknowledgement() -> None:
    for captured in CAPTURED["conntrack_R"]:
        tool = bytes.fromhex(captured["hex"])
        f = flows.parse(captured["line"])
        assert f is not None
        flags, seq = struct.unpack_from("=HI", tool, 6)
        ours = ctnetlink.create_message(f, seq)
        assert flags == ctnetlink.NLM_F_REQUEST | ctnetlink.NLM_F_CREATE | ctnetlink.NLM_F_EXCL | ctnetlink.NLM_F_ACK
        assert ours == tool[:6] + struct.pack("=H", flags & ~ctnetlink.NLM_F_ACK) + tool[8:]


def test_the_kernels_dump_reads_as_the_lines_that_made_the_entries() -> None:
    tcp, udp = flows.parse(TCP_LINE), flows.parse(UDP_LINE)
    assert tcp is not None and udp is not None
    got = _flows(CAPTURED["dump"])
    # The entry without NAT is not ours; the UDP entry was deleted before the dump; the short one is TIME_WAIT.
    assert [f is None for f in got] == [True, False, False]
    listed = got[1]
    assert listed is not None and listed == tcp._replace(timeout=listed.timeout)
    assert 0 < tcp.timeout - listed.timeout <= 2 and not listed.userspace  # a dump is no program's event
    short = got[2]
    assert short is not None and (short.state, short.nat, short.nat_port, short.sport) == ("TIME_WAIT", NAT, 40000,
                                                                                           40000)  # fmt: skip


def test_the_kernels_events_read_as_updates_and_ends_with_their_cause() -> None:
    tcp, udp = flows.parse(TCP_LINE), flows.parse(UDP_LINE)
    assert tcp is not None and udp is not None
    got = _flows(CAPTURED["events"])
    seen = [None if f is None else (f.op, f.proto, f.sport, f.timeout, f.userspace) for f in got]
    assert seen == [
        ("A", "tcp", 51542, 431999, True),  # conntrack -R's loads: a program's
        ("A", "udp", 5353, 170, True),
        ("A", "tcp", 40000, 2, True),
        None,  # the entry with no NAT
        ("A", "udp", 5353, 100, True),  # conntrack -U
        ("D", "udp", 5353, 99, True),  # conntrack -D
        ("D", "tcp", 40000, 0, False),  # expired: the kernel's own end event
    ]
    assert got[0] == tcp._replace(userspace=True) and got[1] == udp._replace(userspace=True)


def test_updates_without_a_tcp_state_and_garbled_messages_are_not_flows() -> None:
    data = bytes.fromhex(CAPTURED["dump"][0])
    (_, at, n) = list(ctnetlink.messages(data))[1]
    msg = bytearray(data[at : at + n])
    assert ctnetlink.flow_of(bytes(msg), 0, n) is not None
    ipv6 = bytearray(msg)
    ipv6[16] = socket.AF_INET6
    assert ctnetlink.flow_of(bytes(ipv6), 0, n) is None
    dnat = bytearray(msg)
    dnat[20 + 52 + 12 : 20 + 52 + 16] = socket.inet_aton("198.51.100.1")  # the reply's source: destination NAT
    assert ctnetlink.flow_of(bytes(dnat), 0, n) is None
    assert ctnetlink.flow_of(bytes(msg), 0, 20 + 104) is None  # no TCP state
    assert ctnetlink.flow_of(bytes(msg), 0, 60) is None  # truncated


@SHARED
@given(st.data())
def test_no_corruption_of_a_captured_message_raises(data: st.DataObject) -> None:
    raw = bytes.fromhex(data.draw(st.sampled_from(CAPTURED["dump"] + CAPTURED["events"])))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    for _kind, at, n in ctnetlink.messages(cut):
        f = ctnetlink.flow_of(cut, at, n)
        assert f is None or (f.proto in ("tcp", "udp") and f.sport and f.dport and f.nat_port)


_ADDR = st.builds(lambda a: socket.inet_ntoa(struct.pack("!I", a)), st.integers(1, 2**32 - 1))
_PORT = st.integers(1, 65535)


@st.composite
def _flow(draw: st.DrawFn) -> flows.Flow:
    proto = draw(st.sampled_from(["tcp", "udp"]))
    src, dst, nat = draw(_ADDR), draw(_ADDR), draw(_ADDR)
    if nat == src:
        nat = "10.0.100.21" if src != "10.0.100.21" else "10.0.100.22"
    return flows.Flow(draw(st.sampled_from("AD")), proto, src, dst, draw(_PORT), draw(_PORT), nat, draw(_PORT),
                      draw(st.integers(0, flows.MAX_TIMEOUT)), draw(st.sampled_from(["", "SEEN_REPLY", "ASSURED",
                                                                                     "SEEN_REPLY,ASSURED"])),
                      draw(st.sampled_from(sorted(flows.TCP_STATES))) if proto == "tcp" else "")  # fmt: skip


def _kernel_message(f: flows.Flow, pid: int) -> bytes:
    """An event as the kernel lays it out (tuples, an id, the status, the timeout, the TCP state)."""
    src, dst, nat = (socket.inet_aton(a) for a in (f.src, f.dst, f.nat))
    proto = ctnetlink.PROTO_NUMBERS[f.proto]
    status = 0x198 | (2 if "SEEN_REPLY" in f.status else 0) | (4 if "ASSURED" in f.status else 0)
    attrs = (ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_ORIG, src, dst, proto, f.sport, f.dport)
             + ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_REPLY, dst, nat, proto, f.dport, f.nat_port)
             + struct.pack("=HH", 8, ctnetlink.CTA_ID) + b"\x12\x34\x56\x78"
             + struct.pack("=HH", 8, ctnetlink.CTA_STATUS) + struct.pack("!I", status)
             + struct.pack("=HH", 8, ctnetlink.CTA_TIMEOUT) + struct.pack("!I", f.timeout))  # fmt: skip
    if f.proto == "tcp":
        state = struct.pack("=HHB3x", 5, 1, flows.TCP_STATE_NAMES.index(f.state))
        attrs += struct.pack("=HH", 4 + 4 + len(state), 0x8000 | 4) + struct.pack("=HH", 4 + len(state), 0x8001) + state
    kind = ctnetlink.MSG_DELETE if f.op == "D" else ctnetlink.MSG_NEW
    return struct.pack("=IHHII", 20 + len(attrs), kind, 0, 0, pid) + struct.pack("!BBH", 2, 0, 0) + attrs


@SHARED
@given(_flow(), st.booleans())
def test_every_flow_reads_back_from_the_kernels_layout(f: flows.Flow, by_program: bool) -> None:
    got = ctnetlink.flow_of(_kernel_message(f, 4242 if by_program else 0), 0, len(_kernel_message(f, 0)))
    assert got == f._replace(userspace=by_program)


@SHARED
@given(st.lists(_flow(), max_size=30))
def test_flows_cross_the_wire_unchanged(sent: list[flows.Flow]) -> None:
    header, got = wire.decode(wire.encode({"table": "rtb-a"}, sent))
    assert header == {"table": "rtb-a"} and got == sent


def test_the_wire_drops_records_that_are_not_flows_and_refuses_a_ragged_body() -> None:
    f = flows.parse(TCP_LINE)
    assert f is not None
    good = wire.pack_flows([f])
    bad_proto = good[:1] + b"\x84" + good[2:]  # SCTP
    bad_state = good[:-1] + b"\x09"  # SYN_SENT2: not a state we sync
    no_port = good[:10] + b"\0\0" + good[12:]  # client port 0
    assert wire.unpack_flows(good + bad_proto + bad_state + no_port) == [f]
    with pytest.raises(wire.ProtocolError, match="whole number"):
        wire.unpack_flows(good[:-1])


def _bpf(prog: list[tuple[int, int, int, int]], packet: bytes) -> int:
    """A classic BPF interpreter for the instructions event_filter uses (a load past the end drops, as in Linux)."""
    pc = a = 0
    for _ in range(len(prog)):
        code, jt, jf, k = prog[pc]
        if code == ctnetlink.BPF_LD_LEN:
            a = len(packet)
        elif code in (ctnetlink.BPF_LDH_ABS, ctnetlink.BPF_LDB_ABS):
            size = 2 if code == ctnetlink.BPF_LDH_ABS else 1
            if k + size > len(packet):
                return 0
            a = int.from_bytes(packet[k : k + size], "big")
        elif code in (ctnetlink.BPF_JEQ_K, ctnetlink.BPF_JGE_K):
            pc += jt if (a == k if code == ctnetlink.BPF_JEQ_K else a >= k) else jf
        elif code == ctnetlink.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"instruction {code:#x}")
        pc += 1
    raise AssertionError("ran off the end")


def test_the_event_filter_passes_the_captured_events_but_a_closing_tcp_update() -> None:
    prog = ctnetlink.event_filter()
    assert len(ctnetlink.filter_bytes(prog)) == 8 * len(prog)
    passed = []
    for h in CAPTURED["events"]:
        f = ctnetlink.flow_of(bytes.fromhex(h), 0, len(bytes.fromhex(h)))
        passed.append((_bpf(prog, bytes.fromhex(h)) != 0, None if f is None else (f.op, f.proto, f.state)))
    assert passed == [
        (True, ("A", "tcp", "ESTABLISHED")),
        (True, ("A", "udp", "")),
        (False, ("A", "tcp", "TIME_WAIT")),  # the service would ignore it: the kernel keeps it
        (True, None),
        (True, ("A", "udp", "")),
        (True, ("D", "udp", "")),
        (True, ("D", "tcp", "TIME_WAIT")),  # ends always pass
    ]


@SHARED
@given(_flow(), st.booleans())
def test_the_event_filter_drops_only_tcp_updates_the_service_ignores(f: flows.Flow, with_state: bool) -> None:
    message = _kernel_message(f, 0)
    if not with_state and f.proto == "tcp":
        message = struct.pack("=I", 20 + 104 + 24) + message[4 : 20 + 104 + 24]  # an update with no TCP state
    ignored = f.op == "A" and f.proto == "tcp" and (f.state != "ESTABLISHED" or not with_state)
    dropped = _bpf(ctnetlink.event_filter(), message) == 0
    # Never a flow the service needs; with a TCP state, every update it ignores (one without is short: the
    # filter passes it on rather than read past its end, and the service drops it).
    assert dropped == ignored if with_state else not dropped or ignored
