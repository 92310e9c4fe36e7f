"""The HA cycle: one NAT's agent (observe -> decide -> act), split by concern into modules."""

from agent.cycle.agent import Agent
from agent.cycle.export import build_info
from agent.cycle.memory import Ec2Writes, Held, Memory, RestartProgress
from agent.cycle.ports import Ec2Like, FlowSyncLike, HealthLike, NoFlowSync, ProbesLike
from agent.cycle.standing import EC2_FAILURES_TO_GIVE_UP, EC2_PENALTY_MAX, OWN_EC2_FAILURES, THROTTLE_BACKOFF

__all__ = [
    "EC2_FAILURES_TO_GIVE_UP",
    "EC2_PENALTY_MAX",
    "OWN_EC2_FAILURES",
    "THROTTLE_BACKOFF",
    "Agent",
    "Ec2Like",
    "Ec2Writes",
    "FlowSyncLike",
    "HealthLike",
    "Held",
    "Memory",
    "NoFlowSync",
    "ProbesLike",
    "RestartProgress",
    "build_info",
]
