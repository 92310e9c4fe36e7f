"""An HTTP-aware TCP proxy in front of the lab's EC2 (moto) that can hold one request, as AWS may.

AWS can apply a request it received long after the client gave up; moto answers at once. This
proxy gives the lab that behaviour on demand: one listening port per NAT (so the lab knows whose
requests they are), requests forwarded whole, and on the command ``hold I ACTION`` the next
request from NAT I whose body names ``Action=ACTION`` is kept - with everything after it on that
connection - until ``release I``, when it goes to moto even if the client has given up and
closed its connection (AWS applies a request it received).

    ip netns exec INET python -m agent.lab.holdproxy LISTEN_HOST BASE_PORT COUNT UP_HOST UP_PORT

Commands on stdin, one per line (``hold I ACTION``, ``release I``); events on stdout (``ready``,
``held I ACTION``, ``released I``). Exits when stdin closes or after an hour.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

MAX_REQUEST = 1 << 20


@dataclass
class Hold:
    action: str = ""  # armed: hold the next request naming this action
    held: list[bytes] = field(default_factory=list)  # the held request and what followed it
    server: socket.socket | None = None
    released: threading.Event = field(default_factory=threading.Event)


class Proxy:
    def __init__(self, upstream: tuple[str, int], count: int) -> None:
        self.upstream = upstream
        self.holds = [Hold() for _ in range(count)]
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.out_lock:
            print(line, flush=True)

    def serve(self, listen: socket.socket, i: int) -> None:
        while True:
            client, _ = listen.accept()
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self.requests, args=(client, server, i), daemon=True).start()
            threading.Thread(target=pump, args=(server, client), daemon=True).start()

    def requests(self, client: socket.socket, server: socket.socket, i: int) -> None:
        """Client to server, one whole request at a time; hold the armed one and what follows."""
        buf = b""
        holding = False
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buf += data
                while not holding:
                    request, buf = split_request(buf)
                    if request is None:
                        break
                    with self.lock:
                        h = self.holds[i]
                        if h.action and f"Action={h.action}".encode() in request:
                            holding, h.action = True, ""
                            h.held, h.server = [request], server
                            h.released.clear()
                            self.say(f"held {i} {request.split(b'Action=', 1)[1].split(b'&', 1)[0].decode()}")
                            continue
                    server.sendall(request)
                if holding and buf:
                    with self.lock:
                        self.holds[i].held.append(buf)
                    buf = b""
                if len(buf) > MAX_REQUEST:
                    break
        except OSError:
            pass
        if holding:  # the client gave up; AWS still has the request: wait for the release
            self.holds[i].released.wait(600)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def release(self, i: int) -> None:
        with self.lock:
            h = self.holds[i]
            held, server, h.held, h.server = h.held, h.server, [], None
        if server is not None:
            with contextlib.suppress(OSError):
                for chunk in held:
                    server.sendall(chunk)
        h.released.set()
        self.say(f"released {i}")


def split_request(buf: bytes) -> tuple[bytes | None, bytes]:
    """The first whole HTTP/1.1 request in ``buf`` (Content-Length framing) and the rest."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, buf
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or b"0")
    total = end + 4 + length
    if len(buf) < total:
        return None, buf
    return buf[:total], buf[total:]


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def main(argv: list[str]) -> int:
    host, base, count, up_host, up_port = argv[0], int(argv[1]), int(argv[2]), argv[3], int(argv[4])
    proxy = Proxy((up_host, up_port), count)
    for i in range(count):
        listen = socket.create_server((host, base + i))
        threading.Thread(target=proxy.serve, args=(listen, i), daemon=True).start()
    proxy.say("ready")
    deadline = time.monotonic() + 3600
    for line in sys.stdin:  # bounded: the parent closes stdin; the hour ends it too
        words = line.split()
        if time.monotonic() > deadline:
            break
        if len(words) == 3 and words[0] == "hold":
            with proxy.lock:
                proxy.holds[int(words[1])].action = words[2]
        elif len(words) == 2 and words[0] == "release":
            proxy.release(int(words[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
