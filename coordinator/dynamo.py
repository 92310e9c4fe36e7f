"""DynamoDB backend (AWS, moto server, dynalite) through pynamodb.

Writes use pynamodb's conditional ``save``; reads use the model's connection with
``ConsistentRead`` and deserialise rows leniently, so that a hand-edited item is
reported as bad instead of failing the whole read. Every call is bounded by the
connect/read timeouts and the retry budget given here (rule 3), far below a lease.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import BooleanAttribute, NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import PynamoDBException
from pynamodb.expressions.condition import Condition
from pynamodb.models import Model

from coordinator.dynamo_http import (
    CallBudget,
    FastClient,
    bound_botocore_client,
    fast_client_for,
    fast_path_off,
    sender_for,
)
from coordinator.errors import StoreConfigError
from coordinator.instrument import CallObserver, instrument_client
from coordinator.items import Attrs
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Unavailable

CONFIG_ERRORS = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ValidationException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
    }
)

_STRING_ATTRS = (
    "kind", "session", "state", "token", "health", "agent_version", "az", "address",
    "expired_by", "owner", "owner_session", "home", "phase", "target",
)  # fmt: skip
_NUMBER_ATTRS = ("version", "lease_ms", "term", "attempts", "cooldown_ms", "updated_at", "restart_grace_ms")
_BOOL_ATTRS = ("draining",)


@dataclass(frozen=True)
class DynamoSettings:
    """Where the table is and how long one call may take."""

    table: str = "nat-ha"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 0.15
    read_timeout_s: float = 0.15
    max_attempts: int = 1  # botocore sleeps up to 1 s before a retry: longer than a lease

    def resolved_endpoint(self) -> str | None:
        """Config key first, then the standard AWS variables (service-specific wins)."""
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )


def make_model(settings: DynamoSettings) -> type[Model]:
    """A pynamodb model class bound to one table and endpoint (one per store)."""

    class Meta:
        table_name = settings.table
        region = settings.region
        host = settings.resolved_endpoint()
        connect_timeout_seconds = settings.connect_timeout_s
        read_timeout_seconds = settings.read_timeout_s
        max_retry_attempts = max(0, settings.max_attempts - 1)
        max_pool_connections = 4

    attrs: dict[str, Any] = {
        "Meta": Meta,
        "group": UnicodeAttribute(hash_key=True),
        "item": UnicodeAttribute(range_key=True),
        "gc_at": TTLAttribute(null=True),
    }
    for name in _STRING_ATTRS:
        attrs[name] = UnicodeAttribute(null=True)
    for name in _NUMBER_ATTRS:
        attrs[name] = NumberAttribute(null=True)
    for name in _BOOL_ATTRS:
        attrs[name] = BooleanAttribute(null=True)
    return type("GroupItem", (Model,), attrs)


def _code(exc: PynamoDBException) -> str:
    """AWS's error code, or the name of the transport error (timeouts have no response)."""
    cause = getattr(exc, "cause", None)
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(cause or exc).__name__


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the items use int/float/str/bool."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def use_session(connection: Any, session: Any) -> None:
    """Make a pynamodb ``Connection`` create its client from ``session`` (a botocore session).

    pynamodb keeps one botocore session per thread (``Connection._local.session``) and
    makes its client from it on first use. Each session loads its own copy of
    ``endpoints.json``, the retry and default configuration and the service models:
    about 10 MB that the agent's EC2 client already holds. Setting this thread's session
    before the client exists shares them (and the trimmed models, agent/aws/models.py).
    A client made later on another thread gets pynamodb's own session, as before.
    """
    local = getattr(connection, "_local", None)
    if local is not None and getattr(connection, "_client", None) is None:
        local.session = session


class DynamoStore:
    """The :class:`~coordinator.store.Store` on a DynamoDB table."""

    def __init__(self, settings: DynamoSettings, on_call: CallObserver | None = None, *, session: Any = None) -> None:
        self.settings = settings
        self.model = make_model(settings)
        self._deserializer: Any = None  # boto3's, made on first use (importing boto3 costs ~0.2 s at start)
        self._on_call = on_call
        self._prepared: Any = None  # the botocore client instrumented and bound to a sender
        # Each call's own budget, when its caller gives one (``timeout=``), up to the sender's timeout:
        # max(connect_timeout_s, read_timeout_s) is the most any call may take.
        self._budget = CallBudget()
        # The hot operations go over coordinator.dynamo_http where it behaves like botocore.
        self._fast_wanted = settings.max_attempts == 1 and not fast_path_off()
        connection = self.model._get_connection().connection
        if session is not None:
            use_session(connection, session)
        self._prepare_client()

    def _prepare_client(self) -> None:
        """Instrument the connection's botocore client once, bound its calls, put the fast stand-in in front.

        Every call, on either path, goes through one :class:`coordinator.awshttp.Sender`
        and ends by a hard deadline: ``max(timeouts)`` per attempt, times the attempts
        per call (not only per socket operation, as botocore's timeouts do). Called
        before every call: pynamodb makes a new botocore client when the one it has
        lacks credentials (dropping the stand-in), and the new one needs all of it too.
        """
        connection = self.model._get_connection().connection
        if isinstance(connection._client, FastClient):
            return
        client = connection.client
        if client is self._prepared:
            return
        instrument_client(client, self._on_call)  # timing, errors, call recording
        self._prepared = client
        s = self.settings
        sender = sender_for(client, connection.session, max(s.connect_timeout_s, s.read_timeout_s))
        if sender is None:
            self._fast_wanted = False  # a proxy is configured: botocore handles it (per-operation timeouts only)
            return
        bound_botocore_client(client, sender, s.max_attempts, self._budget)
        if self._fast_wanted:
            fast = fast_client_for(client, connection.session, sender, on_call=self._on_call, budget=self._budget)
            connection._client = fast  # type: ignore[assignment]  # duck-typed stand-in

    # ------------------------------------------------------------------ reads
    def _rows(self, raw_items: list[dict[str, Any]]) -> list[Attrs]:
        return [{name: self._value(typed) for name, typed in raw.items()} for raw in raw_items]

    def _value(self, typed: Any) -> Any:
        """A DynamoDB-typed value as a plain one; left raw when it cannot be read (the parser reports it).

        Strings, whole numbers and booleans (nearly every value) are read directly;
        the rest goes through boto3's deserializer.
        """
        if type(typed) is dict and len(typed) == 1:
            kind, value = next(iter(typed.items()))
            if type(value) is str and (kind == "S" or (kind == "N" and value.isascii() and value.isdigit())):
                return value if kind == "S" else int(value)
            if kind == "BOOL" and type(value) is bool:
                return value
        if self._deserializer is None:
            from boto3.dynamodb.types import TypeDeserializer

            self._deserializer = TypeDeserializer()
        try:
            return _plain(self._deserializer.deserialize(typed))
        except (TypeError, ValueError, ArithmeticError):
            return typed

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        self._prepare_client()
        conn = self.model._get_connection()
        items: list[dict[str, Any]] = []
        start_key = None
        try:
            with self._budget.using(timeout):
                for _ in range(100):  # bounded pagination: a group is a handful of items
                    data = conn.query(group, consistent_read=True, exclusive_start_key=start_key)
                    items.extend(data.get("Items", []))
                    start_key = data.get("LastEvaluatedKey")
                    if not start_key:
                        break
        except PynamoDBException as exc:
            self._raise_read(exc)
        return self._rows(items)

    def get_item(self, group: str, item: str, *, timeout: float | None = None) -> Attrs | None:
        self._prepare_client()
        conn = self.model._get_connection()
        try:
            with self._budget.using(timeout):
                data = conn.get_item(group, item, consistent_read=True)
        except PynamoDBException as exc:
            self._raise_read(exc)
        raw = data.get("Item")
        return self._rows([raw])[0] if raw else None

    def _raise_read(self, exc: PynamoDBException) -> None:
        code = _code(exc)
        if code in CONFIG_ERRORS:
            raise StoreConfigError(f"DynamoDB table {self.settings.table!r}: {code}: {exc.msg}") from exc
        raise Unavailable(f"{code}: {exc.msg}") from exc

    # ----------------------------------------------------------------- writes
    def _condition(self, expect: Expect) -> Condition | None:
        m = self.model
        if expect.unconditional:
            return None
        if expect.absent:
            return m.item.does_not_exist()  # type: ignore[attr-defined,no-any-return]
        cond: Condition | None = None
        for name, value in expect.equals.items():
            clause = getattr(m, name) == value
            cond = clause if cond is None else cond & clause
        assert cond is not None
        return cond

    def put_item(
        self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, timeout: float | None = None
    ) -> None:
        values = {k: v for k, v in attrs.items() if v is not None and v != ""}
        values["updated_at"] = int(time.time())  # for humans reading the table; never for expiry
        unknown = set(values) - set(_STRING_ATTRS) - set(_NUMBER_ATTRS) - set(_BOOL_ATTRS) - {"item"}
        if unknown:
            raise ValueError(f"unknown attributes {sorted(unknown)}")
        self._prepare_client()
        row = self.model(group, **values)
        if gc_after_s is not None:
            from datetime import timedelta

            row.gc_at = timedelta(seconds=gc_after_s)  # type: ignore[attr-defined]
        try:
            with self._budget.using(timeout):
                row.save(condition=self._condition(expect), add_version_condition=False)
        except PynamoDBException as exc:
            code = _code(exc)
            if code == "ConditionalCheckFailedException":
                raise ConditionFailed(str(attrs["item"])) from exc
            if code in CONFIG_ERRORS:
                raise StoreConfigError(f"DynamoDB table {self.settings.table!r}: {code}: {exc.msg}") from exc
            raise OutcomeUnknown(f"{code}: {exc.msg}") from exc


def init_table(
    settings: DynamoSettings,
    *,
    billing: str = "PAY_PER_REQUEST",
    read_capacity: int = 5,
    write_capacity: int = 5,
    wait_s: float = 120.0,
) -> list[str]:
    """Create the table if missing, wait for ACTIVE, enable TTL where supported.

    Returns human-readable lines saying what was done. Idempotent.
    """
    if billing not in ("PAY_PER_REQUEST", "PROVISIONED"):
        raise ValueError("billing must be PAY_PER_REQUEST or PROVISIONED")
    # Table administration may take longer than a lease call: use generous bounds.
    admin = DynamoSettings(
        table=settings.table,
        region=settings.region,
        endpoint_url=settings.resolved_endpoint(),
        connect_timeout_s=5,
        read_timeout_s=10,
        max_attempts=3,
    )
    model = make_model(admin)
    instrument_client(model._get_connection().connection.client)
    done: list[str] = []
    try:
        if model.exists():
            done.append(f"table {settings.table} exists")
        else:
            # pynamodb's create_table also calls UpdateTimeToLive (the model has a TTL
            # attribute); emulators without TTL (dynalite) reject it: TTL is set below.
            if billing == "PAY_PER_REQUEST":
                model.create_table(billing_mode="PAY_PER_REQUEST", wait=False, ignore_update_ttl_errors=True)
            else:
                model.create_table(
                    read_capacity_units=read_capacity,
                    write_capacity_units=write_capacity,
                    wait=False,
                    ignore_update_ttl_errors=True,
                )
            done.append(f"created table {settings.table} ({billing.lower().replace('_', '-')})")
        deadline = time.monotonic() + wait_s
        conn = model._get_connection()
        while True:
            status = conn.describe_table().get("TableStatus")
            if status == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise StoreConfigError(f"table {settings.table} still {status} after {wait_s:.0f} s")
            time.sleep(0.5)
        done.append("table is ACTIVE")
        client: Any = conn.connection.client
        try:
            client.update_time_to_live(
                TableName=settings.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "gc_at"}
            )
            done.append("TTL enabled on gc_at (garbage collection only)")
        except Exception as exc:
            text = str(exc)
            if "already enabled" in text.lower():
                done.append("TTL already enabled on gc_at")
            else:
                done.append(f"TTL not enabled ({type(exc).__name__}); items are still correct without it")
    except PynamoDBException as exc:
        raise StoreConfigError(f"cannot create table {settings.table!r}: {_code(exc)}: {exc.msg}") from exc
    except (ClientError, BotoCoreError) as exc:  # pynamodb lets some through (e.g. from exists())
        raise StoreConfigError(f"cannot create table {settings.table!r}: {exc}") from exc
    return done
