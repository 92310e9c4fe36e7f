"""agent.host.conntrack.Writer.replace's bookkeeping, against a kernel stand-in that answers each request the way
ctnetlink does (EEXIST for a create of an existing tuple, ENOENT for a delete of a missing one, nothing on
success). The live kernel checks the same in tests/lab/test_ctnetlink.py."""

from __future__ import annotations

import errno
import struct

import pytest

from agent.host import conntrack, ctnetlink, flows


class StandIn(conntrack.Writer):
    """A Writer whose sends go to a dict of tuples instead of a netlink socket."""

    def __init__(self, existing: set[bytes], lose_answers: bool = False) -> None:
        self.port, self.seq, self.failed, self.existed = 77, 0, {}, []
        self.entries = set(existing)
        self.sent: list[tuple[str, bytes]] = []
        self.lose_answers = lose_answers

    def _flush(self, chunk: list[bytes]) -> int:
        answers = b""
        for m in chunk:
            kind, seq, tup = struct.unpack_from("=H", m, 4)[0], struct.unpack_from("=I", m, 8)[0], m[20:72]
            op = "create" if kind == ctnetlink.MSG_NEW else "delete"
            self.sent.append((op, tup))
            err = 0
            if op == "create":
                err = errno.EEXIST if tup in self.entries else 0
                self.entries.add(tup)
            else:
                err = 0 if tup in self.entries else errno.ENOENT
                self.entries.discard(tup)
            if err:
                answers += struct.pack("=IHHII", 36, ctnetlink.NLMSG_ERROR, 0x100, seq, 0) + struct.pack("=i", -err)
                answers += m[:16]
        if self.lose_answers:
            self.failed[errno.ENOBUFS] = self.failed.get(errno.ENOBUFS, 0) + 1
        else:
            for e, seq in ctnetlink.failures(answers):
                self.failed[e] = self.failed.get(e, 0) + 1
                if e == errno.EEXIST:
                    self.existed.append(seq)
        return len(chunk)


def _flow(i: int) -> flows.Flow:
    return flows.Flow("A", "udp", "10.0.1.10", "203.0.113.10", 20000 + i, 53, "10.0.100.21", 20000 + i, 30)


@pytest.mark.parametrize("start_seq", [0, 0xFFFFFFFF - 600])  # the sequence numbers wrap inside the batch
def test_a_replace_deletes_and_remakes_only_the_entries_that_exist(start_seq: int) -> None:
    batch = [_flow(i) for i in range(1200)]  # more than one send (PER_SEND)
    there = {ctnetlink.orig_tuple(f) for f in batch[::7]}
    w = StandIn(there)
    w.seq = start_seq
    assert w.replace(batch) == len(batch)
    deletes = [t for op, t in w.sent if op == "delete"]
    assert sorted(deletes) == sorted(there)  # no delete for a tuple with no entry
    creates = [t for op, t in w.sent if op == "create"]
    assert len(creates) == len(batch) + len(there) and set(creates) == {ctnetlink.orig_tuple(f) for f in batch}
    assert w.sent.index(("delete", ctnetlink.orig_tuple(batch[0]))) < len(w.sent) - 1
    assert w.failed == {errno.EEXIST: len(there)}  # the second create of each met no entry


def test_a_replace_whose_answers_were_lost_fails_so_that_the_sender_resyncs() -> None:
    batch = [_flow(i) for i in range(10)]
    w = StandIn({ctnetlink.orig_tuple(batch[3])}, lose_answers=True)
    with pytest.raises(conntrack.ConntrackError, match="No buffer space"):
        w.replace(batch)  # which entries existed is unknown: an entry may keep its old public port
