"""Taking over the session of this instance's previous agent process, so a restart moves no route.

An agent crash (restarted by ``Restart=always``), ``systemctl restart`` and an upgrade (new
package, then a restart) leave the NAT forwarding all along: only the agent, the control plane,
was away. Peers tolerate a heartbeat silence of ``silent_owner_after`` (2 s) from a NAT that
answers their probes; after that they take its route tables. So a new process resumes the
session its predecessor recorded (agent/host/runstate.py) *before anything slow*: right after
the imports of the DynamoDB store it needs, one consistent read and one conditional renewal
(:meth:`~coordinator.leases.Coordinator.resume_session`). It may, because it holds the lifetime
lock of the runtime directory: the predecessor has exited and can start no new write. It must
renew before acting: its lease clock starts at that renewal, never at the predecessor's.

The rest of start-up (the EC2 client, discovering the members, service models trimmed anew after
an upgrade of botocore: seconds) then runs while a :class:`Keeper` thread renews the session every
``heartbeat_interval``; the service loop takes it over at its first cycle. While the trimmed
models are not made yet, the resume goes through a temporary DynamoDB client on botocore's full
models, so making them never delays it.

What is not taken over: a session a peer expired meanwhile (the NAT was away longer than its
peers tolerate, e.g. a crash loop backing off) - the agent then starts a new session as at any
start, and takes its tables back by the usual rules. Writes the predecessor sent just before it
died may still land: its DynamoDB writes are conditional (they fail once the session moved on),
and the tables it held are written again once none of its EC2 writes can land any more, as a new
holder's are (:data:`Resumed.writes_land_until`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.aws.models import botocore_session, models_ready, plain_session
from agent.config import Config
from agent.host.runstate import Recorded
from agent.runtime import Runtime, member_info, store_budget, store_for
from coordinator.clock import Clock
from coordinator.dynamo import DynamoStore
from coordinator.errors import CoordinatorError, SessionLost, StoreConfigError, StoreUnavailable
from coordinator.instrument import CallObserver
from coordinator.items import Health
from coordinator.leases import Coordinator

log = logging.getLogger("nat_ha.agent")


class NextProcess:
    """Before exiting for a restart: make what the next process needs that may be slow to make.

    After an upgrade, its trimmed AWS models (agent/aws/models.py) may not exist yet: a child
    running the code installed now makes them while this process goes on serving, so the next
    one starts fast and resumes the session in time. :meth:`ready` is polled every cycle; it is
    True once the child is done, failed, or overran ``timeout`` (killed: the next process then
    resumes through a temporary client and makes the models itself).
    """

    def __init__(self, timeout: float = 20.0) -> None:
        from agent.aws.models import ENSURE

        self.deadline = time.monotonic() + timeout
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "agent.aws.models", ENSURE], stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            log.warning("cannot prepare the next agent process's AWS models (%s); exiting at once", exc)
            self.proc = None

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return True
        if time.monotonic() > self.deadline:
            log.warning("the next agent process's AWS models are not made in time; exiting anyway")
            self.proc.kill()
            self.proc.wait()
            return True
        return False


def mismatch(recorded: Recorded | None, config: Config) -> str:
    """Why ``recorded`` is not a session of this config's member ("": it is)."""
    if recorded is None:
        return "no session was recorded"
    for what, theirs, ours in (
        ("group", recorded.group, config.group),
        ("instance", recorded.instance, config.instance_id),
        ("table", recorded.table, config.store.table),
    ):
        if theirs != ours:
            return f"it was of {what} {theirs!r}, this agent's is {ours!r}"
    return ""


def seconds_since_exec() -> float:
    """How long ago this process was started (from /proc; 0.0 where that cannot be read)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime: field 22 of stat(5)
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


class Keeper:
    """Renews a resumed session every ``interval`` until the service loop takes it over.

    The only user of the coordinator meanwhile (the daemon does not touch it before :meth:`stop`).
    A renewal that fails is retried a cycle later; a lost session stops the keeper (the first
    cycle starts a new one).
    """

    def __init__(self, coordinator: Coordinator, health: Health, draining: bool, interval: float, retry: float):
        self.coordinator = coordinator
        self.health = health
        self.draining = draining
        self.interval = interval
        self.retry = retry
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        c = self.coordinator
        failing = False
        while True:
            s = c.session
            if s is None:
                return
            due = s.valid_until - c.lease_s + self.interval  # the last renewal started lease_s before valid_until
            wait = self.retry if failing else due - c.clock.monotonic()
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                c.heartbeat(self.health, draining=self.draining)
                self.renewals += 1
                failing = False
            except SessionLost as exc:
                log.warning("the resumed session was lost while starting (%s); the first cycle starts a new one", exc)
                return
            except CoordinatorError as exc:  # DynamoDB unreachable, or an odd item: try again
                if not failing:
                    log.warning("renewal while starting failed (%s); retrying", exc)
                failing = True


@dataclass
class Resumed:
    """The outcome of a take-over attempt at start: the coordinator, and the session if it was resumed."""

    coordinator: Coordinator
    store: DynamoStore
    final: bool  # the store is on the process's own botocore session (else a temporary one)
    session: str = ""  # the resumed session ("": none; the first cycle starts one)
    # Monotonic time until which an EC2 write of the predecessor may still land: its lease ran at
    # most to our resume (+ lease) and AWS may apply a write up to ec2_apply_horizon after that.
    writes_land_until: float = 0.0
    keeper: Keeper | None = field(default=None, repr=False)

    def adopt(self, rt: Runtime) -> Coordinator:
        """Hand the session to the service: stop renewing here, use the runtime's own store from now on."""
        if self.keeper is not None:
            self.keeper.stop()
        c = self.coordinator
        c.store = rt.store
        c.info = member_info(rt.config)
        return c


def resume(
    config: Config,
    recorded: Recorded | None,
    clock: Clock,
    *,
    on_session: Callable[[str], None],
    on_call: CallObserver | None = None,
) -> Resumed | None:
    """Resume the recorded session of this member if it is still alive; None if none was recorded.

    ``config`` has its identity resolved (instance id, region). Every outcome is logged: resumed,
    or why a new session will be started.
    """
    why = mismatch(recorded, config)
    if recorded is None:
        return None
    final = models_ready()
    store = store_for(config, on_call=on_call, session=botocore_session() if final else plain_session())
    t = config.timing
    coordinator = Coordinator(
        store,
        config.group,
        config.instance_id,
        clock,
        t.lease,
        info=member_info(config),
        on_session=on_session,
        budget=store_budget(t),
    )
    out = Resumed(coordinator, store, final)
    if why:
        log.info("not taking over the previous agent process's session %s: %s", recorded.session[:8], why)
        return out
    t0 = clock.monotonic()
    try:
        item = coordinator.resume_session(recorded.session)
    except SessionLost as exc:
        log.info(
            "%s, %.2f s after this process started; starting a new session (the route tables come back by "
            "the usual rules)",
            exc,
            seconds_since_exec(),
        )
        return out
    except (StoreUnavailable, StoreConfigError) as exc:
        log.warning("cannot resume session %s (%s); starting a new session", recorded.session[:8], exc)
        return out
    out.session = recorded.session
    out.writes_land_until = t0 + t.lease + t.ec2_apply_horizon
    how = (
        f"it exited for a restart {clock.monotonic() - recorded.ended_at:.2f} s ago"
        if recorded.ended == "restart" and recorded.ended_at > 0
        else "it ended without a restart signal: a crash or a kill"
    )
    log.info(
        "took over session %s (version %d) of the previous agent process (pid %d; %s), %.2f s after this "
        "process started: no route table moves",
        recorded.session[:8],
        item.version,
        recorded.pid,
        how,
        seconds_since_exec(),
    )
    # The predecessor's word on EC2 and the date of its round-trip figure (ages as of its last heartbeat)
    # would grow stale with every renewal: say nothing of them until the first cycle of ours.
    health = dataclasses.replace(item.health, ec2_answered=None, store_rtt_age=None)
    out.keeper = Keeper(coordinator, health, item.draining, t.heartbeat_interval, t.cycle_interval)
    out.keeper.start()
    return out
