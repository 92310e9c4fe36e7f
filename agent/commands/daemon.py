"""``nat-ha agent``: the long-running service (systemd Type=notify with a watchdog).

SIGTERM (or SIGINT) starts a planned handover: the agent hands every route table
to a healthy peer (route first, then the lease), marks itself as left and exits;
a second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
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


def run(args: argparse.Namespace) -> int:
    from agent import config as cfg

    if args.drain_timeout <= 0:
        raise UsageError("--drain-timeout must be positive")
    return Daemon(cfg.load(args.config), args.drain_timeout).main(once=args.once)


class Daemon:
    def __init__(self, config: Any, drain_timeout: float) -> None:
        self.config = config
        self.drain_timeout = drain_timeout
        self.stop_requested = threading.Event()
        # Ends the wait between cycles early: a signal, or a peer's probes turning it down (its
        # session may then be expirable before the next regular cycle).
        self.wake = threading.Event()
        self.signals = 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: exiting without finishing the handover")
            raise SystemExit(1)
        log.info("received %s: handing route tables over before exiting", signal.Signals(signum).name)
        self.stop_requested.set()
        self.wake.set()

    def main(self, once: bool = False) -> int:
        from agent import logsetup
        from agent.cycle import Agent, build_info
        from agent.host.probes import EchoResponder, Prober, ProbeSetupError, Target
        from agent.host.sdnotify import Notifier
        from agent.host.selfcheck import SelfChecker
        from agent.metrics import Metrics
        from agent.runtime import coordinator_for, resolve
        from coordinator.clock import SystemClock
        from coordinator.errors import StoreConfigError, StoreUnavailable

        config = self.config
        logsetup.setup(config.log_format, config.log_level, {"group": config.group})
        metrics = Metrics()

        rt = resolve(config, ec2_on_call=metrics.observe_aws_call, store_on_call=metrics.observe_aws_call)
        config = rt.config
        logsetup.setup(config.log_format, config.log_level, {"group": config.group, "instance": config.instance_id})
        clock = SystemClock()
        coordinator = coordinator_for(rt, clock)
        try:
            coordinator.read_group()
        except StoreConfigError as exc:
            print(f"nat-ha agent: {exc} (create it with `nat-ha init-table`)", file=sys.stderr)
            return 1
        except StoreUnavailable as exc:
            log.warning("DynamoDB not reachable at start (%s); will keep trying, no route is touched meanwhile", exc)
        me = config.member(config.instance_id)
        assert me is not None
        targets = [
            Target(m.instance_id, m.address, m.probe_port or config.probe.tcp_port)
            for m in config.members
            if m.instance_id != config.instance_id
        ]

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
        try:
            if not once:  # --once must not take the running agent's port
                metrics.serve(config.metrics_listen)
        except OSError as exc:
            print(f"nat-ha agent: metrics.listen: cannot listen on {config.metrics_listen}: {exc}", file=sys.stderr)
            return 2
        flows, guard = None, None
        made: list[Any] = []  # the agent, once made: the sync's thread reads its last group snapshot
        if config.conntrack_sync.enabled and not once:
            flows, guard = self._flow_sync(config, metrics, lambda: made[0].last_snapshot if made else None)
        agent = Agent(
            config,
            coordinator,
            rt.ec2,
            prober,
            SelfChecker(config.self_check, flow_guard=guard),
            clock,
            metrics,
            holder=rt.holder,
            flows=flows,
        )
        made.append(agent)
        notifier = Notifier()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
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
            return self._loop(agent, notifier, once)
        finally:
            prober.stop()
            if responder is not None:
                responder.stop()
            if flows is not None:
                flows.close()

    @staticmethod
    def _flow_sync(config: Any, metrics: Any, snapshot: Any) -> tuple[Any, Any]:
        """conntrack_sync: the cycle's port to the sync service (started) and what the self check requires."""
        from agent.ctsync.agentside import FlowSync
        from agent.host.selfcheck import FlowGuardCheck
        from agent.metrics import SyncMetrics

        me = config.instance_id
        peers = [m.instance_id for m in config.members if m.instance_id != me]
        sync_metrics = SyncMetrics(metrics.registry, peers, config.route_tables())
        members = {m.instance_id: m.address for m in config.members}
        flows = FlowSync(config.conntrack_sync, me, members, snapshot, sync_metrics)
        flows.start()
        addresses = tuple(a for t in config.egress_tables if (a := t.address(me)))
        guard = FlowGuardCheck(addresses, config.self_check.public_interface, config.conntrack_sync.firewall)
        return flows, guard

    def _loop(self, agent: Any, notifier: Any, once: bool) -> int:
        from agent.service import ServiceLoop

        if once:
            # One look, no action: no session, no write. A second process must never disturb
            # the agent that runs for this instance (it would supersede its session).
            time.sleep(self.config.probe.interval * self.config.probe.window)  # let the probe window fill
            decision = agent.run_cycle(act=False)
            print(decision.summary)
            return 1 if decision.kind == "store_unavailable" else 0
        loop = ServiceLoop(agent, self.drain_timeout, time.monotonic)
        ready = False
        while True:
            self.wake.clear()
            if self.stop_requested.is_set() and not loop.stop_requested:
                loop.request_stop()
                notifier.stopping("draining: handing route tables over")
            step = loop.step()
            if not ready:
                notifier.ready(step.decision.summary)
                ready = True
            notifier.watchdog(step.decision.summary)
            if step.exit_code is not None:
                return step.exit_code
            delay = step.wake_at - time.monotonic()
            if delay > 0:
                self.wake.wait(delay) if not loop.stopping else time.sleep(delay)
