"""Turning a config into live parts: identity, members, the store, EC2.

Shared by the daemon and the operator commands (status, drain, switchover), so
they all resolve the config the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import __version__
from agent.aws.ec2 import Ec2, Ec2Error
from agent.aws.imds import ImdsError, account_id, identity, instance_arn
from agent.aws.models import botocore_session
from agent.config import Config, ConfigError, Timing, egress_problems, with_discovered
from agent.members import Membership, derive_egress
from coordinator.clock import Clock, SystemClock
from coordinator.dynamo import DynamoSettings, DynamoStore
from coordinator.instrument import CallObserver
from coordinator.leases import Coordinator, MemberInfo, StoreBudget

OPERATOR_TIMEOUT_S = 5.0  # per call, for status/drain/switchover (not bound by a lease)


@dataclass
class Runtime:
    config: Config
    store: DynamoStore
    ec2: Ec2
    holder: str = ""  # this instance's ARN for the route tables' holder tag ("": no tagging)
    operator: bool = False  # an operator's command: its calls wait for an answer, no lease to fit
    problems: tuple[str, ...] = ()  # what the discovered members break (egress): listed by status, fatal to the agent


def with_identity(config: Config, *, need_identity: bool = True) -> Config:
    """The config with this instance's id and region filled in (from the environment or IMDSv2).

    Raises :class:`ConfigError` when they are not set and IMDS cannot tell.
    """
    instance_id, region = config.instance_id, config.region
    if (need_identity and not instance_id) or not region:
        region = region or os.environ.get("AWS_REGION", "") or os.environ.get("AWS_DEFAULT_REGION", "")
        if (need_identity and not instance_id) or not region:
            try:
                iid, reg, _az = identity()
            except ImdsError as exc:
                missing = [k for k, v in (("instance_id", instance_id), ("region", region)) if not v]
                raise ConfigError([f"{k}: not set and {exc}" for k in missing]) from None
            instance_id = instance_id or iid
            region = region or reg
    return with_discovered(config, instance_id=instance_id, region=region)


def store_for(
    config: Config, *, on_call: CallObserver | None = None, operator: bool = False, session: Any = None
) -> DynamoStore:
    """The DynamoDB store of a config whose region is known (:func:`with_identity`).

    ``session``: a botocore session (default: the process's, on trimmed models; EC2 and
    DynamoDB share it, so data loads once).
    """
    t = config.timing
    # The agent's calls must fit inside its lease; an operator's command can wait for an answer.
    timeout, attempts = (OPERATOR_TIMEOUT_S, 3) if operator else (t.store_timeout, t.store_attempts)
    return DynamoStore(
        DynamoSettings(
            table=config.store.table,
            region=config.region,
            endpoint_url=config.store.endpoint_url or None,
            connect_timeout_s=timeout,
            # The most one call may take; the agent's coordinator fits each call's budget below it
            # (StoreBudget). Through a proxy (botocore's own timeouts, per socket operation) a slow
            # answer gets as long as the agent's longest budget.
            read_timeout_s=timeout if operator else t.store_timeout_max,
            max_attempts=attempts,
        ),
        on_call=on_call,
        session=session if session is not None else botocore_session(),
    )


def resolve(
    config: Config,
    *,
    need_identity: bool = True,
    ec2_on_call: CallObserver | None = None,
    store_on_call: CallObserver | None = None,
    operator: bool = False,
    store: DynamoStore | None = None,
) -> Runtime:
    """Fill in IMDS and tag-discovered values; build the store and EC2 clients.

    ``store``: the DynamoDB store made earlier for this config (:func:`store_for`), if any.
    Raises :class:`ConfigError` with one line per problem.
    """
    config = with_identity(config, need_identity=need_identity)
    members = {m.instance_id: m for m in config.members}
    region = config.region
    call_timeout = OPERATOR_TIMEOUT_S if operator else config.timing.ec2_timeout
    ec2 = Ec2(
        region,
        config.ec2.endpoint_url,
        timeout=call_timeout,
        members=members,
        on_call=ec2_on_call,
        egress=config.egress(),
    )
    problems: list[str] = []
    if config.members_from_tags:
        config, problems = discovered(config, ec2)
        if problems and not operator:
            raise ConfigError(problems)
    if need_identity and config.member(config.instance_id) is None:
        raise ConfigError([f"instance_id: {config.instance_id} is not a member of group {config.group}"])
    ec2.members = {m.instance_id: m for m in config.members}
    ec2.egress = config.egress()
    if store is None:
        store = store_for(config, on_call=store_on_call, operator=operator)
    holder = ""
    if need_identity and not operator and config.ec2.holder_tag:
        account = config.ec2.account_id
        if not account:
            try:
                account = account_id()
            except ImdsError as exc:
                raise ConfigError([f"ec2.account_id: not set and {exc} (needed for ec2.holder_tag)"]) from None
        holder = instance_arn(config.instance_id, region, account)
    return Runtime(config, store, ec2, holder, operator=operator, problems=tuple(problems))



def discovered(config: Config, ec2: Ec2) -> tuple[Config, list[str]]:
    """``config`` with its members, homes and egress addresses as EC2's tags show them now, and what
    those members break (egress_problems: the agent refuses to start, ``nat-ha status`` lists them).

    One instance is enough to start: in a stack the NATs start one after another, and the
    agent learns of its peers while it runs (agent.memberwatch).
    """
    try:
        found = ec2.discover(config.group, with_eni=config.egress_follow)
    except Ec2Error as exc:
        raise ConfigError([f"members_from_tags: cannot discover members: {exc}"]) from None
    if not found.members:
        raise ConfigError([f"members_from_tags: no instance is tagged nat-ha:group={config.group}"])
    return with_membership(config, found)


def with_membership(config: Config, found: Membership) -> tuple[Config, list[str]]:
    """``config`` with the members of ``found`` and the egress addresses derived for them (agent.members),
    and what keeps egress_ip = follow from working with these members (one line each)."""
    tables = derive_egress(config.egress_tables, found.members) if config.egress_follow else config.egress_tables
    out = with_discovered(config, members=found.members, homeless=found.homeless, egress_tables=tables)
    return out, egress_problems(out)


def member_info(config: Config) -> MemberInfo:
    """What this member writes about itself in its heartbeat besides health."""
    me = config.member(config.instance_id)
    return MemberInfo(agent_version=__version__, az=me.az if me else "", address=me.address if me else "")


def coordinator_for(
    rt: Runtime,
    clock: Clock | None = None,
    lease_s: float | None = None,
    on_session: Callable[[str], None] | None = None,
) -> Coordinator:
    config = rt.config
    t = config.timing
    return Coordinator(
        rt.store,
        config.group,
        config.instance_id or "operator",
        clock or SystemClock(),
        lease_s if lease_s is not None else t.lease,
        info=member_info(config),
        on_session=on_session,
        budget=None if rt.operator else store_budget(t),
    )


def store_budget(t: Timing) -> StoreBudget:
    """Each DynamoDB call's time, fitted to the lease (coordinator.leases.StoreBudget)."""
    return StoreBudget(t.store_timeout, t.store_timeout_max)
