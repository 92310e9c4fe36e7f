"""``nat-ha agent``: the long-running service (systemd Type=notify with a watchdog).

SIGTERM (or SIGINT) starts a planned handover: the agent hands every route table
to a healthy peer (route first, then the lease), marks itself as left and exits;
a second signal exits at once. That is a *stop* (``systemctl stop``, shutdown, scale-in).

SIGUSR2 is a *restart* (the unit's ``RestartKillSignal=``: ``systemctl restart``, an
upgrade's restart): the agent renews its session once more and exits without draining; the
next process takes the session over (agent/handoff.py) and no route moves. A crash is taken
over the same way. Both need the runtime directory (``--runtime-dir``, systemd's
``$RUNTIME_DIRECTORY``), which holds the lifetime lock and the session record.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH

log = logging.getLogger("nat_ha.agent")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument(
        "--once",
        action="store_true",
        help="observe and decide one cycle without acting (no session, no write), print the decision and exit "
        "(1 if the store could not be read)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="on SIGTERM, how long to try handing route tables over before exiting (default 15)",
    )
    p.add_argument(
        "--runtime-dir",
        metavar="DIR",
        default=None,
        help="where this process records its session for the next one (a restart or a crash takes it over "
        "instead of starting anew); default $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), '' to disable",
    )


def run(args: argparse.Namespace) -> int:
    from agent import config as cfg
    from agent.host.runstate import default_dir

    if args.drain_timeout <= 0:
        raise UsageError("--drain-timeout must be positive")
    runtime_dir = default_dir() if args.runtime_dir is None else args.runtime_dir
    return Daemon(cfg.load(args.config), args.drain_timeout, runtime_dir).main(once=args.once)


def store_advice(exc: Any, config: Any) -> str:
    """The store's refusal, with what to do: a missing table is created only once the region is known right.

    In a wrong region the table is missing too: `init-table` would create a second, empty arbiter
    there, and the members in the right region would never see this one.
    """
    if getattr(exc, "code", "") != "ResourceNotFoundException":
        return str(exc)
    table, region = config.store.table, config.region
    return (
        f"{exc}; is {region} the group's region? If not, fix `region` in the config (every member must use "
        f"the same table in the same region); if it is, create the table once: nat-ha init-table --region {region} "
        f"--table {table}"
    )


class Daemon:
    def __init__(self, config: Any, drain_timeout: float, runtime_dir: str = "") -> None:
        self.config = config
        self.drain_timeout = drain_timeout
        self.runtime_dir = runtime_dir
        self.stop_requested = threading.Event()
        self.restart_requested = threading.Event()
        # Ends the wait between cycles early: a signal, or a peer's probes turning it down (its
        # session may then be expirable before the next regular cycle).
        self.wake = threading.Event()
        self.signals = 0
        self.drain_s: float | None = None  # how long the planned hand-over on SIGTERM took
        self.watches: Any = None  # agent.watches.Watches (members_from_tags)
        self.prober: Any = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: exiting without finishing the handover")
            raise SystemExit(1)
        log.info("received %s: handing route tables over before exiting", signal.Signals(signum).name)
        self.stop_requested.set()
        self.wake.set()

    def _on_restart_signal(self, signum: int, _frame: object) -> None:
        if self.stop_requested.is_set():
            log.info("received %s while draining: the drain goes on", signal.Signals(signum).name)
            return
        log.info("received %s: exiting for a restart, without draining", signal.Signals(signum).name)
        self.restart_requested.set()
        self.wake.set()

    def _claim_runtime_dir(self, notifier: Any) -> Any:
        """The runtime directory's lock and record (None: none configured); waits out a crash loop's back-off.

        Raises :class:`LockHeld` when another agent process uses the directory.
        """
        from agent.host.runstate import LOOP_WINDOW, RunState, backoff

        if not self.runtime_dir:
            return None
        now = time.monotonic()
        state = RunState.claim(self.runtime_dir, now)
        if state.note:
            log.warning("ignoring the previous agent process's record: %s", state.note)
        delay = backoff(state.starts[:-1], now)
        if delay > 0:
            log.warning(
                "started %d times within %.0f s: waiting %.0f s before starting (crash-loop back-off)",
                len([t for t in state.starts if now - t < LOOP_WINDOW]),
                LOOP_WINDOW,
                delay,
            )
            end = now + delay
            while not self.wake.is_set() and time.monotonic() < end:
                notifier.send("WATCHDOG=1\nSTATUS=crash-loop back-off")
                self.wake.wait(min(1.0, max(0.0, end - time.monotonic())))
        return state

    def main(self, once: bool = False) -> int:
        from agent import logsetup
        from agent.host.runstate import LockHeld
        from agent.host.sdnotify import Notifier

        config = self.config
        logsetup.setup(config.log_format, config.log_level, {"group": config.group})
        notifier = Notifier()
        if once:
            return self._main(once, None, notifier)
        # Early, so that a restart or stop during start-up is not the default action (death).
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_restart_signal)
        try:
            state = self._claim_runtime_dir(notifier)
        except LockHeld as exc:
            print(f"nat-ha agent: {exc}", file=sys.stderr)
            if os.environ.get("INVOCATION_ID"):  # a systemd unit: Restart= would retry this every 100 ms
                time.sleep(1.0)
            return 1
        except OSError as exc:
            log.warning(
                "cannot use the runtime directory %s (%s): a restart of this agent will start a new session",
                self.runtime_dir,
                exc,
            )
            state = None
        code = self._main(once, state, notifier)
        if state is not None and code is not None:
            if self.restart_requested.is_set() and not self.stop_requested.is_set():
                state.ended_for_restart(time.monotonic())
            elif self.stop_requested.is_set():
                state.forget()  # left the group (or gave up draining): nothing for a restart to take over
        return code

    def _main(self, once: bool, state: Any, notifier: Any) -> int:
        from agent import handoff, logsetup
        from agent.metrics import Metrics
        from agent.runtime import coordinator_for, resolve, with_identity
        from coordinator.clock import SystemClock
        from coordinator.errors import StoreConfigError, StoreUnavailable

        if self.stop_requested.is_set() or self.restart_requested.is_set():
            return 0  # told to go during a crash-loop back-off
        metrics = Metrics()
        clock = SystemClock()
        config = with_identity(self.config)
        logsetup.setup(config.log_format, config.log_level, {"group": config.group, "instance": config.instance_id})

        def remember(session: str) -> None:
            if state is not None:
                state.remember(config.group, config.instance_id, config.store.table, session)

        # Before anything slow: take the previous process's session over (a restart or a crash).
        resumed = handoff.resume(
            config, state.recorded if state is not None else None, clock,
            on_session=remember, on_call=metrics.observe_aws_call,
        )  # fmt: skip
        try:
            rt = resolve(
                config,
                ec2_on_call=metrics.observe_aws_call,
                store_on_call=metrics.observe_aws_call,
                store=resumed.store if resumed is not None and resumed.final else None,
            )
        except BaseException:
            if resumed is not None and resumed.keeper is not None:
                resumed.keeper.stop()
            raise
        config = rt.config
        if resumed is not None and resumed.session:
            coordinator = resumed.coordinator  # renewed by its keeper until the loop starts (adopt)
        else:
            coordinator = coordinator_for(rt, clock, on_session=remember)
            try:
                coordinator.read_group()
            except StoreConfigError as exc:
                print(f"nat-ha agent: {store_advice(exc, config)}", file=sys.stderr)
                return 1
            except StoreUnavailable as exc:
                log.warning(
                    "DynamoDB not reachable at start (%s); will keep trying, no route is touched meanwhile", exc
                )
        try:
            return self._serve(config, rt, coordinator, resumed, clock, metrics, notifier, once)
        finally:
            if resumed is not None and resumed.keeper is not None:
                resumed.keeper.stop()

    def _serve(
        self, config: Any, rt: Any, coordinator: Any, resumed: Any, clock: Any, metrics: Any, notifier: Any, once: bool
    ) -> int:
        from agent.cycle import Agent, build_info
        from agent.cycle.journal import Journal
        from agent.host.probes import EchoResponder, Prober, ProbeSetupError
        from agent.host.selfcheck import SelfChecker
        from agent.runtime import history_store
        from agent.watches import make as make_watches
        from agent.watches import probe_targets
        from coordinator import awshttp
        from coordinator.history import HistoryWriter

        me = config.member(config.instance_id)
        assert me is not None
        targets = probe_targets(config)

        p = config.probe
        try:
            prober = Prober(
                targets,
                method=p.method,
                interval=p.interval,
                timeout=p.timeout,
                window=p.window,
                down_after=p.down_after,
                privileged=p.privileged,
                observer=metrics.observe_probe,  # children resolved once, not labels() per probe
                on_down=lambda _peer: self.wake.set(),
            )
        except ProbeSetupError as exc:
            print(f"nat-ha agent: probe: {exc}", file=sys.stderr)
            return 2
        responder = None
        if p.answer_port and not once:
            try:
                responder = EchoResponder(me.address, p.answer_port)
            except OSError as exc:
                print(
                    f"nat-ha agent: probe.answer_port: cannot listen on {me.address}:{p.answer_port}: {exc}",
                    file=sys.stderr,
                )
                return 2
            responder.start()
        build_info(metrics, config)
        if config.metrics_dataplane and not once:
            from agent.host.dataplane import DataPlaneCollector

            metrics.registry.register(DataPlaneCollector(config.self_check.procfs))
        try:
            if not once:  # --once must not take the running agent's port
                metrics.serve(config.metrics_listen)
        except OSError as exc:
            print(f"nat-ha agent: metrics.listen: cannot listen on {config.metrics_listen}: {exc}", file=sys.stderr)
            return 2
        history = None
        if not once:  # --once writes nothing, its history included
            history = HistoryWriter(
                lambda: history_store(rt, metrics.observe_aws_call),
                config.group,
                config.instance_id,
                clock,
                on_result=lambda result: metrics.history_events.labels(result).inc(),
            )
        flows, guard = None, None
        made: list[Any] = []  # the agent, once made: the sync's thread reads its last group snapshot
        if config.conntrack_sync.enabled and not once:
            flows, guard = self._flow_sync(config, metrics, lambda: made[0].last_snapshot if made else None,
                                           lambda: made[0].config if made else config)  # fmt: skip
        agent = Agent(
            config,
            coordinator,
            rt.ec2,
            prober,
            SelfChecker(config.self_check, flow_guard=guard),
            clock,
            metrics,
            holder=rt.holder,
            on_event=Journal(history) if history is not None else None,
            flows=flows,
        )
        made.append(agent)
        # Every AWS answer's server time (Date) against our monotonic clock: pauses it did not count.
        awshttp.set_answer_listener(agent.pauses.server_date)
        if resumed is not None and resumed.session:
            resumed.adopt(rt)  # the keeper stops; the first cycle renews
            agent.resumed(resumed.writes_land_until)
        # members_from_tags: new and gone members learned while running; Auto Scaling's termination hook.
        self.watches = None if once else make_watches(config, self.config.egress_tables, rt.ec2, metrics)
        if self.watches is not None:
            self.watches.start()
        self.prober = prober
        prober.start()
        log.info(
            "nat-ha agent %s starting: group %s, %d members, probing %d peers by %s",
            config.instance_id,
            config.group,
            len(config.members),
            len(targets),
            p.method,
        )
        try:
            code = self._loop(agent, notifier, once)
            if history is not None:  # the stop is the history's last entry of this process
                history.record("agent_stop", config.instance_id, why=self.stop_why(code), seconds=self.drain_s)
                history.close(timeout=1.0)
            return code
        finally:
            if self.watches is not None:
                self.watches.stop()
            prober.stop()
            if responder is not None:
                responder.stop()
            if flows is not None:
                flows.close()

    @staticmethod
    def _flow_sync(config: Any, metrics: Any, snapshot: Any, group: Any) -> tuple[Any, Any]:
        """conntrack_sync: the cycle's port to the sync service (started) and what the self check requires.
        ``group``: the agent's current config, whose members and tables' addresses the service is told."""
        from agent.ctsync.agentside import FlowSync
        from agent.host.selfcheck import FlowGuardCheck
        from agent.metrics import SyncMetrics

        me = config.instance_id
        peers = [m.instance_id for m in config.members if m.instance_id != me]
        sync_metrics = SyncMetrics(metrics.registry, peers, config.route_tables())
        members = {m.instance_id: m.address for m in config.members}
        flows = FlowSync(config.conntrack_sync, me, members, snapshot, sync_metrics, group=group)
        flows.start()
        addresses = tuple(a for t in config.egress_tables if (a := t.address(me)))
        guard = FlowGuardCheck(addresses, config.self_check.public_interface, config.conntrack_sync.firewall)
        return flows, guard

    def stop_why(self, code: int) -> str:
        if self.restart_requested.is_set() and not self.stop_requested.is_set():
            return "restart: the next process takes the session over"
        if self.drain_s is None:
            return "stopped"
        return "signal: handed every route table over" if code == 0 else "signal: the hand-over timed out"

    def _loop(self, agent: Any, notifier: Any, once: bool) -> int:
        from agent.handoff import NextProcess
        from agent.service import ServiceLoop

        if once:
            # One look, no action: no session, no write. A second process must never disturb
            # the agent that runs for this instance (it would supersede its session).
            from agent.cycle.preview import preview

            time.sleep(self.config.probe.interval * self.config.probe.window)  # let the probe window fill
            decision, running = preview(agent)
            print(f"would: {decision.summary}")
            if running:
                print(
                    f"(decided as the running agent's session {running[:8]}, from one look; this process wrote "
                    "nothing, and timers such as the fail-back hold-down start at this look)"
                )
            elif decision.kind != "store_unavailable":
                print(f"(no agent runs for {agent.me}: this is what one would do on starting; nothing was written)")
            return 1 if decision.kind == "store_unavailable" else 0
        loop = ServiceLoop(agent, self.drain_timeout, time.monotonic, wall=time.time)
        ready = False
        draining_since: float | None = None
        while True:
            self.wake.clear()
            if self.stop_requested.is_set() and not loop.stop_requested:
                loop.request_stop()
                notifier.stopping("draining: handing route tables over")
            if self.restart_requested.is_set() and not loop.restart_requested:
                loop.request_restart(NextProcess().ready)
                notifier.stopping("exiting for a restart: the next process takes the session over")
            step = loop.step()
            if loop.stopping and draining_since is None:
                draining_since = time.monotonic()
            if not ready:
                notifier.ready(step.decision.summary)
                ready = True
            notifier.watchdog(step.decision.summary)
            if step.exit_code is not None:
                if draining_since is not None:
                    self.drain_s = time.monotonic() - draining_since
                return step.exit_code
            if self.watches is not None:
                self.watches.between_cycles(agent, self.prober, time.monotonic())
            delay = step.wake_at - time.monotonic()
            if delay > 0:
                self.wake.wait(delay) if not loop.stopping else time.sleep(delay)
