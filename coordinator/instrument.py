"""One botocore hook for every AWS client nat-ha makes (DynamoDB via pynamodb, EC2).

It times each call and reports failures to a callback (metrics), and, when
``NAT_HA_RECORD_AWS_CALLS`` names a file, appends one JSON line per call with the
action and the resources it touched; the IAM policy test reads those lines to
prove the policy allows every call the agent makes and nothing more.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

RECORD_ENV = "NAT_HA_RECORD_AWS_CALLS"
# Parameters that name the resource a call acts on, and the tags it writes (what IAM scopes by).
_RESOURCE_PARAMS = (
    "TableName", "RouteTableId", "RouteTableIds", "InstanceIds", "InstanceId", "NetworkInterfaceId", "Resources",
    "AllocationId", "AllocationIds", "Tags", "AutoScalingGroupName", "StackName",
)  # fmt: skip

# on_call(service, operation, seconds, error_code_or_None)
CallObserver = Callable[[str, str, float, "str | None"], None]
_write_lock = threading.Lock()


def record_call(service: str, operation: str, params: dict[str, Any]) -> None:
    """Append the call to the ``NAT_HA_RECORD_AWS_CALLS`` file, if one is named."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    resources = {k: params[k] for k in _RESOURCE_PARAMS if k in params}
    line = json.dumps({"service": service, "action": operation, "resources": resources}, sort_keys=True)
    with _write_lock:
        append_record(path, line + "\n")


def append_record(path: str, text: str) -> None:
    """Append whole lines under an exclusive file lock: several test processes share one record."""
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(text)
        fh.flush()


def instrument_client(client: Any, on_call: CallObserver | None = None) -> Any:
    """Register timing/recording hooks on a botocore client; returns the client."""
    service = client.meta.service_model.service_name
    events = client.meta.events

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        record_call(service, model.name, params)

    def before(model: Any, context: dict[str, Any], **_: Any) -> None:
        context["nat_ha_t0"] = time.monotonic()

    def after(http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if on_call is None:
            return
        err = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        status = getattr(http_response, "status_code", 200)
        code = err or (str(status) if status >= 400 else None)
        on_call(service, model.name, time.monotonic() - context.get("nat_ha_t0", time.monotonic()), code)

    def after_error(exception: Exception, context: dict[str, Any], event_name: str = "", **_: Any) -> None:
        # botocore emits after-call-error with exception and context only (no model):
        # the operation is the last part of the event name.
        if on_call is not None:
            t0 = context.get("nat_ha_t0", time.monotonic())
            operation = event_name.rsplit(".", 1)[-1] if event_name else "unknown"
            on_call(service, operation, time.monotonic() - t0, type(exception).__name__)

    events.register(f"before-parameter-build.{service}", record, unique_id=f"nat-ha-record-{id(client)}")
    events.register(f"before-call.{service}", before, unique_id=f"nat-ha-before-{id(client)}")
    events.register(f"after-call.{service}", after, unique_id=f"nat-ha-after-{id(client)}")
    events.register(f"after-call-error.{service}", after_error, unique_id=f"nat-ha-error-{id(client)}")
    return client
