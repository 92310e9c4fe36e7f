"""Long-lived TCP and UDP flows through the lab's NATs, and what happened to each (tests/lab, bench/flows.py).

A server on the fake internet (``serve``) and a client in a private subnet (``clients``), each one
process with non-blocking sockets, bounded in time. Every message is a line ``<flow id>:<seq>``.
The kinds, each a way a flow can die when its route table moves to another NAT:

* ``tcp_client`` - the client sends every interval, the server echoes (client-first packets);
* ``tcp_push`` - the client says hello once, then only the server sends (server-first packets:
  the new NAT meets them with no entry; without the guard it would answer with a reset);
* ``udp_client`` - UDP, the client sends and the server echoes;
* ``udp_push`` - UDP, hello once, then only the server sends;
* ``tcp_remapped`` - client-talks TCP from a second address with the same source port as a
  ``tcp_client`` flow to the same server port: the NAT must remap its public port, which another
  NAT keeps only if it loads the entry.

The server records every public address and port each flow came from (a flow whose port
changed shows two), and every reset it saw. The client prints ``ready`` once every flow has
answered, and at the end (SIGTERM or ``--seconds``) writes a JSON report: per flow, its kind,
messages received, the largest gap between them, the time of the last one and the first error
(a reset, ICMP unreachable, a closed connection).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import selectors
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("tcp_client", "tcp_push", "udp_client", "udp_push", "tcp_remapped")
TCP_PORT = 8000
UDP_PORT = 8001
INTERVAL = 0.1


# ------------------------------------------------------------------ server
@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    buf: bytes = b""
    flow: str = ""
    push: bool = False
    seq: int = 0


def serve(address: str, seconds: float, out: str, interval: float = INTERVAL) -> int:
    """Echo or push on TCP_PORT and UDP_PORT until ``seconds`` pass or SIGTERM; then write ``out``."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    sel = selectors.DefaultSelector()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((address, TCP_PORT))
    lst.listen(1024)
    lst.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, UDP_PORT))
    udp.setblocking(False)
    sel.register(lst, selectors.EVENT_READ, "listen")
    sel.register(udp, selectors.EVENT_READ, "udp")
    conns: dict[int, _Conn] = {}
    peers: dict[str, list[str]] = {}  # flow -> public address:port it came from (in order of first sight)
    udp_push: dict[str, tuple[str, int]] = {}
    udp_seq: dict[str, int] = {}
    resets: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    next_push = time.monotonic() + interval
    print("ready", flush=True)

    def seen(flow: str, peer: str) -> None:
        got = peers.setdefault(flow, [])
        if peer not in got:
            got.append(peer)

    def drop(c: _Conn, why: str) -> None:
        if why:
            resets.append({"flow": c.flow, "peer": c.peer, "error": why, "t": time.time()})
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(c.sock)
        conns.pop(c.sock.fileno(), None)
        c.sock.close()

    while not stop[0] and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, min(next_push, end) - time.monotonic())):
            if key.data == "listen":
                with contextlib.suppress(BlockingIOError):
                    s, (host, port) = lst.accept()
                    s.setblocking(False)
                    c = _Conn(s, f"{host}:{port}")
                    conns[s.fileno()] = c
                    sel.register(s, selectors.EVENT_READ, c)
            elif key.data == "udp":
                for _ in range(256):
                    try:
                        data, addr = udp.recvfrom(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    text = data.decode(errors="replace").strip()
                    flow, _, rest = text.partition(":")
                    seen(flow, f"{addr[0]}:{addr[1]}")
                    if rest.startswith("hello:push"):
                        udp_push[flow] = addr
                    elif not rest.startswith("hello"):
                        with contextlib.suppress(OSError):
                            udp.sendto(data, addr)
            else:
                c = key.data
                try:
                    chunk = c.sock.recv(4096)
                except ConnectionResetError:
                    drop(c, "reset")
                    continue
                except OSError as exc:
                    drop(c, errno.errorcode.get(exc.errno or 0, str(exc)))
                    continue
                if not chunk:
                    drop(c, "")
                    continue
                c.buf += chunk
                while b"\n" in c.buf:
                    line, c.buf = c.buf.split(b"\n", 1)
                    flow, _, rest = line.decode(errors="replace").partition(":")
                    if not c.flow:
                        c.flow = flow
                        seen(flow, c.peer)
                        c.push = rest.startswith("hello:push")
                        continue
                    if not c.push:
                        try:
                            c.sock.send(line + b"\n")
                        except OSError as exc:
                            drop(c, "reset" if exc.errno == errno.ECONNRESET else str(exc))
                            break
        now = time.monotonic()
        if now >= next_push:
            next_push = now + interval
            for c in list(conns.values()):
                if c.push and c.flow:
                    c.seq += 1
                    try:
                        c.sock.send(f"{c.flow}:{c.seq}\n".encode())
                    except BlockingIOError:
                        pass  # the peer is not reading (its NAT moved): TCP retransmits what is queued
                    except OSError as exc:
                        drop(c, "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else str(exc))
            for flow, addr in udp_push.items():
                udp_seq[flow] = udp_seq.get(flow, 0) + 1
                with contextlib.suppress(OSError):
                    udp.sendto(f"{flow}:{udp_seq[flow]}\n".encode(), addr)
    with open(out, "w") as f:
        json.dump({"peers": peers, "resets": resets, "tcp_open": len(conns)}, f)
    return 0


# ------------------------------------------------------------------ clients
@dataclass
class Flow:
    id: str
    kind: str
    local: str
    received: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    max_gap: float = 0.0
    error: str = ""
    error_at: float = 0.0
    sent: int = 0
    buf: bytes = field(default=b"", repr=False)

    def got(self, now: float) -> None:
        if self.last_at:
            self.max_gap = max(self.max_gap, now - self.last_at)
        else:
            self.first_at = now
        self.last_at = now
        self.received += 1


def plan(kinds: dict[str, int], addresses: list[str], first_port: int) -> list[tuple[str, str, str, int]]:
    """(flow id, kind, local address, local port) for ``kinds[k]`` flows of each kind.

    A ``tcp_remapped`` flow takes the second address and the source port of a ``tcp_client``
    flow of the first (one is added when there are too few), so the NAT must remap one of them.
    """
    out: list[tuple[str, str, str, int]] = []
    port = first_port
    for kind in KINDS:
        for _ in range(kinds.get(kind, 0)):
            out.append((f"f{len(out)}", kind, addresses[0], port))
            port += 1
    clients = [p for _, k, _, p in out if k == "tcp_client"]
    remapped = [i for i, (_, k, _, _) in enumerate(out) if k == "tcp_remapped"]
    for n, i in enumerate(remapped):
        if n >= len(clients):
            out.append((f"f{len(out)}", "tcp_client", addresses[0], port))
            clients.append(port)
            port += 1
        fid, kind, _, _ = out[i]
        out[i] = (fid, kind, addresses[1], clients[n])
    return out


def clients(server: str, spec: list[tuple[str, str, str, int]], seconds: float, out: str,
            interval: float = INTERVAL) -> int:  # fmt: skip
    """Run the flows of ``spec`` for ``seconds`` (or until SIGTERM), then write ``out``."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    sel = selectors.DefaultSelector()
    flows: list[Flow] = []
    socks: dict[str, socket.socket] = {}
    for fid, kind, local, port in spec:
        f = Flow(fid, kind, f"{local}:{port}")
        tcp = kind.startswith("tcp")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((local, port))
        s.settimeout(5)
        s.connect((server, TCP_PORT if tcp else UDP_PORT))
        s.setblocking(False)
        hello = f"{fid}:hello:{'push' if kind.endswith('push') else 'echo'}\n".encode()
        s.send(hello)
        flows.append(f)
        socks[fid] = s
        sel.register(s, selectors.EVENT_READ, f)
    ready = False
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    while not stop[0] and time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            next_send = now + interval
            for f in flows:
                if f.error or f.kind.endswith("push"):
                    continue
                f.sent += 1
                try:
                    socks[f.id].send(f"{f.id}:{f.sent}\n".encode())
                except BlockingIOError:
                    pass
                except OSError as exc:
                    _fail(f, exc, sel, socks)
        for key, _ in sel.select(max(0.0, next_send - time.monotonic())):
            f = key.data
            s = socks[f.id]
            for _ in range(64):
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                except OSError as exc:
                    _fail(f, exc, sel, socks)
                    break
                if not data:
                    _fail(f, OSError(errno.ECONNABORTED, "closed by the server"), sel, socks)
                    break
                t = time.time()
                if f.kind.startswith("udp"):
                    f.got(t)
                    continue
                f.buf += data
                while b"\n" in f.buf:
                    _, f.buf = f.buf.split(b"\n", 1)
                    f.got(t)
        if not ready and all(f.received >= 2 for f in flows):
            ready = True
            print("ready", flush=True)
    with open(out, "w") as fh:
        json.dump([{k: v for k, v in asdict(f).items() if k != "buf"} for f in flows], fh)
    return 0


def _fail(f: Flow, exc: OSError, sel: selectors.BaseSelector, socks: dict[str, socket.socket]) -> None:
    f.error = {errno.ECONNRESET: "reset", errno.ECONNREFUSED: "unreachable", errno.EPIPE: "reset"}.get(
        exc.errno or 0, str(exc)
    )
    f.error_at = time.time()
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(socks[f.id])


# ------------------------------------------------------------------ churn (the sync's cost)
def churn(server: str, rate: float, seconds: float, tcp_share: float = 0.5, hold: float = 1.0) -> int:
    """New flows at ``rate`` per second for ``seconds``: each sends one message, gets its echo, and is
    closed ``hold`` seconds later (TCP: connect, echo, close; UDP: a new source port). Prints the
    counts as JSON at the end."""
    sel = selectors.DefaultSelector()
    made = answered = failed = 0
    live: list[tuple[float, socket.socket]] = []
    start = time.monotonic()
    end = start + seconds
    carry = 0.0
    tick = 0.01
    next_tick = start
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_tick:
            next_tick += tick
            carry += rate * tick
            while carry >= 1:
                carry -= 1
                made += 1
                tcp = (made % 100) < tcp_share * 100
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
                s.setblocking(False)
                try:
                    if tcp:
                        s.connect_ex((server, TCP_PORT))
                        sel.register(s, selectors.EVENT_WRITE, ("tcp", made))
                    else:
                        s.sendto(f"c{made}:1\n".encode(), (server, UDP_PORT))
                        sel.register(s, selectors.EVENT_READ, ("udp", made))
                except OSError:
                    failed += 1
                    s.close()
                    continue
                live.append((now + hold, s))
            while live and live[0][0] <= now:
                _, old = live.pop(0)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(old)
                old.close()
        for key, events in sel.select(max(0.0, next_tick - time.monotonic())):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            _, n = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    conn.send(f"c{n}:hello:echo\nc{n}:1\n".encode())
                    sel.modify(conn, selectors.EVENT_READ, key.data)
                elif conn.recv(4096):
                    answered += 1
                    sel.unregister(conn)
            except OSError:
                failed += 1
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn)
    for _, old in live:
        old.close()
    print(json.dumps({"made": made, "answered": answered, "failed": failed, "seconds": time.monotonic() - start}))
    return 0


# ------------------------------------------------------------------ verdicts
def verdict(flows: list[dict[str, Any]], server: dict[str, Any], end: float, alive: float = 1.5) -> dict[str, Any]:
    """Per kind: flows, survivors (no error, data within ``alive`` s of ``end``, one public address:port)."""
    by_kind: dict[str, dict[str, int]] = {}
    lost: list[str] = []
    for f in flows:
        k = by_kind.setdefault(f["kind"], {"flows": 0, "survived": 0})
        k["flows"] += 1
        public = server.get("peers", {}).get(f["id"], [])
        ok = not f["error"] and f["last_at"] >= end - alive and len(public) == 1
        k["survived"] += ok
        if not ok:
            why = f["error"] or ("public port changed" if len(public) > 1 else f"silent {end - f['last_at']:.1f} s")
            lost.append(f"{f['id']} {f['kind']}: {why}")
    # Resets before the end only: stopping the client closes sockets with unread data, which resets them.
    server_resets = [r for r in server.get("resets", []) if r.get("error") == "reset" and r["t"] < end]
    client_resets = [f for f in flows if f["error"] == "reset" and f["error_at"] < end]
    return {"kinds": by_kind, "lost": lost, "resets": len(server_resets) + len(client_resets)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.lab.flowtool")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--address", default="0.0.0.0")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("clients")
    c.add_argument("--server", required=True)
    c.add_argument("--spec", required=True, help="JSON list of [id, kind, local address, local port]")
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--out", required=True)
    ch = sub.add_parser("churn")
    ch.add_argument("--server", required=True)
    ch.add_argument("--rate", type=float, default=1000.0)
    ch.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    if args.cmd == "churn":
        return churn(args.server, args.rate, args.seconds)
    if args.cmd == "serve":
        return serve(args.address, args.seconds, args.out)
    return clients(args.server, [tuple(x) for x in json.loads(args.spec)], args.seconds, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
