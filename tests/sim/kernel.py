"""A deterministic discrete-event kernel whose processes are ordinary blocking code.

The agent's code is synchronous (it calls the store and EC2 and returns), so every
agent process runs in its own thread, but only one thread runs at a time: the
kernel hands a baton to the process whose event is due and waits until it hands
the baton back (by waiting for virtual time to pass, or by ending). A process
that waits while no other event is due before its wake-up time just moves the
clock on, without a thread switch, so a cycle costs few switches.

The order of events is (time, sequence number): with a seeded scenario the run
is exactly reproducible.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable

INFINITY = float("inf")
MAX_STEPS = 5_000_000


class Killed(BaseException):
    """Raised inside a process that was killed while it waited (crash, instance stop).

    A BaseException so that no ``except Exception`` in the agent swallows it.
    """


class SimError(Exception):
    """A process raised an unexpected exception (a bug in the code under test or the simulator)."""


class Proc:
    """One simulated OS process running ``body`` in its own thread."""

    def __init__(self, kernel: Kernel, name: str, body: Callable[[Proc], None]) -> None:
        self.kernel = kernel
        self.name = name
        self.body = body
        self.go = threading.Semaphore(0)
        self.killed = False
        self.done = False
        self.started = False
        self.error: BaseException | None = None
        self.where = "idle"  # idle | store | ec2 | ...: what the process is waiting in
        self.hung_until = 0.0
        self.wait_id = 0  # queue entries of earlier waits are stale
        self.waiting = False
        self.thread = threading.Thread(target=self._main, name=f"sim-{name}", daemon=True)

    def _main(self) -> None:
        self.go.acquire()
        try:
            if not self.killed:
                self.body(self)
        except Killed:
            pass
        except BaseException as exc:  # reported by the kernel, with the seed
            self.error = exc
        finally:
            self.done = True
            self.kernel._back.release()

    def wait(self, dt: float, where: str = "idle") -> None:
        """Let ``dt`` seconds of virtual time pass for this process (called from its thread)."""
        k = self.kernel
        if self.killed:
            raise Killed()
        self.where = where
        target = k.now + max(0.0, dt)
        if self.hung_until <= k.now and k.next_time() > target:
            k.now = target  # nothing else happens before: no switch
            self.where = "running"
            return
        self.wait_id += 1
        self.waiting = True
        k._push(target, (self, self.wait_id))
        k._back.release()
        self.go.acquire()
        self.waiting = False
        if self.killed:
            raise Killed()
        self.where = "running"

    def wake_at(self, t: float) -> None:
        """End the current wait early, at ``t`` (an answer arrived); called from the kernel."""
        if self.waiting and not self.done:
            self.kernel._push(max(t, self.kernel.now), (self, self.wait_id))

    def kill(self) -> None:
        self.killed = True

    def hang(self, seconds: float) -> None:
        """Freeze the process (SIGSTOP, a long GC pause, a frozen VM) wherever it is, inside calls too.

        Its monotonic clock keeps running. A process waiting in a call wakes no earlier
        than the end of the freeze; one running at the instant (the caller of this
        method, at a yield point) stops at its next wait.
        """
        self.hung_until = max(self.hung_until, self.kernel.now + seconds)


class Kernel:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, tuple[Proc, int] | Proc | Callable[[], None]]] = []
        self._seq = 0
        self._back = threading.Semaphore(0)
        self.current: Proc | None = None
        self.procs: list[Proc] = []
        self.steps = 0

    def _push(self, t: float, obj: tuple[Proc, int] | Proc | Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, obj))

    def next_time(self) -> float:
        return self._q[0][0] if self._q else INFINITY

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` (in the kernel) at virtual time ``t``."""
        self._push(max(t, self.now), fn)

    def spawn(self, name: str, body: Callable[[Proc], None], at: float | None = None) -> Proc:
        p = Proc(self, name, body)
        self.procs.append(p)
        p.thread.start()
        p.started = True
        self._push(self.now if at is None else max(at, self.now), p)
        return p

    def _resume(self, p: Proc) -> None:
        self.current = p
        p.go.release()
        self._back.acquire()
        self.current = None
        if p.error is not None:
            err, p.error = p.error, None
            raise SimError(f"process {p.name} raised {type(err).__name__}: {err}") from err

    def run_until(self, t_end: float, after_step: Callable[[], None] | None = None) -> None:
        while self._q and self._q[0][0] <= t_end:
            t, _, obj = heapq.heappop(self._q)
            self.now = max(self.now, t)
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise SimError(f"more than {MAX_STEPS} events: a process does not let virtual time pass")
            if isinstance(obj, tuple):
                proc, wid = obj
                if proc.done or wid != proc.wait_id or not proc.waiting:
                    continue  # a wait that already ended (woken early, or timed out)
                if proc.hung_until > self.now and not proc.killed:
                    self._push(proc.hung_until, obj)
                    continue
                self._resume(proc)
            elif isinstance(obj, Proc):
                if obj.done:
                    continue
                if obj.hung_until > self.now and not obj.killed:
                    self._push(obj.hung_until, obj)
                    continue
                self._resume(obj)
            else:
                obj()
            if after_step is not None:
                after_step()
        self.now = max(self.now, t_end)

    def shutdown(self) -> None:
        """End every process thread (bounded: each is resumed once with ``killed`` set)."""
        for p in self.procs:
            if p.started and not p.done:
                p.killed = True
                self._resume_quiet(p)
        for p in self.procs:
            p.thread.join(timeout=5)

    def _resume_quiet(self, p: Proc) -> None:
        p.go.release()
        self._back.acquire()
