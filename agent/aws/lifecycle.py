"""The termination lifecycle hook of an Auto Scaling group: drain before the instance goes.

When Auto Scaling is about to terminate this instance (a rolling update, a scale-in, a replaced
unhealthy instance) and its group has the hook ``nat-ha-drain``, the instance waits in
``Terminating:Wait`` and IMDS says so: ``autoscaling/target-lifecycle-state`` turns to
``Terminated``. :class:`LifecycleWatch` polls that value in a thread of its own (one local HTTP
request every few seconds); the daemon then drains this NAT - its route tables go to healthy peers,
route first - and, once it holds none (or after :data:`DRAIN_LIMIT`), the watch completes the
lifecycle action (``CompleteLifecycleAction``, CONTINUE) and Auto Scaling terminates the instance.

CompleteLifecycleAction is not an EC2 write to a shared resource, and no lease authorizes it: it
lets Auto Scaling end this very instance, after it has handed its tables over. It is made once,
from this thread, with a client of its own.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
from collections.abc import Callable
from typing import Any

from agent.aws.imds import ImdsError, fetch
from coordinator.instrument import CallObserver, instrument_client

log = logging.getLogger("nat_ha.agent")

HOOK = "nat-ha-drain"  # the stacks' hook name; an Auto Scaling group of your own needs one of this name
STATE_PATH = "autoscaling/target-lifecycle-state"
TERMINATED = "Terminated"
POLL = 5.0  # seconds between two reads of the target lifecycle state
DRAIN_LIMIT = 120.0  # complete the action this long after the drain began, drained or not
COMPLETE_TRIES = 3


def target_state(timeout: float = 1.0) -> str:
    """The Auto Scaling target lifecycle state from IMDS ("" when this instance is in no Auto Scaling group)."""
    try:
        return fetch([STATE_PATH], timeout)[STATE_PATH]
    except ImdsError as exc:
        if isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code == 404:
            return ""
        raise


def complete_action(client: Any, asg: str, instance: str, hook: str = HOOK) -> None:
    """CompleteLifecycleAction CONTINUE for ``instance`` (raises botocore's errors)."""
    client.complete_lifecycle_action(
        LifecycleHookName=hook, AutoScalingGroupName=asg, InstanceId=instance, LifecycleActionResult="CONTINUE"
    )


def plain_client(service: str, region: str, on_call: CallObserver | None = None) -> Any:
    """A client on botocore's full data (a session of its own: the agent's shared session knows only
    the trimmed EC2 and DynamoDB models), with bounded timeouts and retries. Endpoint overrides come
    from the standard variables (AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL)."""
    import botocore.session
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=5, retries={"total_max_attempts": 3, "mode": "standard"})
    client = botocore.session.get_session().create_client(service, region_name=region, config=config)
    instrument_client(client, on_call)
    return client


class LifecycleWatch:
    """Watches for Terminating:Wait; completes the hook's action when told the drain is done."""

    def __init__(
        self,
        instance: str,
        asg: str,
        client: Callable[[], Any],
        *,
        poll: float = POLL,
        state: Callable[[], str] = target_state,
    ) -> None:
        self.instance = instance
        self.asg = asg
        self.client = client  # made on first use: most instances are never terminated while watched
        self.poll = poll
        self.state = state
        self.terminating = threading.Event()
        self.completed = threading.Event()
        self._complete = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nat-ha-lifecycle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._complete.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def complete(self) -> None:
        """The drain is done (or gave up): let Auto Scaling terminate this instance."""
        self._complete.set()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.terminating.is_set():
            try:
                seen = self.state()
                if self._failing:
                    self._failing = False
                    log.info("recovered: the Auto Scaling lifecycle state can be read again")
            except ImdsError as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("cannot read the Auto Scaling lifecycle state (%s); will retry", exc)
                seen = ""
            if seen == TERMINATED:
                log.warning(
                    "Auto Scaling is terminating this instance (group %s, hook %s): draining before it goes",
                    self.asg,
                    HOOK,
                )
                self.terminating.set()
                break
            self._stop.wait(self.poll)
        self._complete.wait()
        if self._stop.is_set():
            return
        for attempt in range(1, COMPLETE_TRIES + 1):
            try:
                complete_action(self.client(), self.asg, self.instance)
            except Exception as exc:  # botocore's errors: retried, then left to the hook's timeout
                log.warning("CompleteLifecycleAction failed (%s), attempt %d/%d", exc, attempt, COMPLETE_TRIES)
                if self._stop.wait(2.0 * attempt):
                    return
                continue
            log.info("lifecycle action completed: Auto Scaling may terminate this instance now")
            self.completed.set()
            return
        log.warning("gave up completing the lifecycle action: the hook's timeout ends it (its default result)")


def drain_due(started: float | None, drained: bool, now: float, limit: float = DRAIN_LIMIT) -> bool:
    """Whether to complete the action now: the drain began and it is done, or it has run ``limit`` seconds."""
    return started is not None and (drained or now - started >= limit)


