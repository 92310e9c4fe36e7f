"""Typed errors of the coordination layer.

No raw botocore or pynamodb exception crosses this package's boundary: the agent
decides what to do from the type alone (stop acting, retry next cycle, report).
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class of every error the coordinator raises."""


class StoreUnavailable(CoordinatorError):
    """The store did not answer in time or answered with a server error.

    ``outcome_unknown`` is True when a write may or may not have been applied and
    the re-read that should have told us failed as well: the caller must treat the
    write as *not* having happened for its own authority, and re-read later.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class Conflict(CoordinatorError):
    """A conditional write lost: somebody changed the item since we read it."""


class SessionLost(CoordinatorError):
    """Our session (the member heartbeat) was expired by a peer or superseded.

    The holder must stop acting on every route table at once and start a new session.
    """


class BadItem(CoordinatorError):
    """An item in the table has a shape nat-ha cannot use (hand-edited, foreign)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"bad item {key!r}: {problem}")
        self.key = key
        self.problem = problem


class StoreConfigError(CoordinatorError):
    """The table is missing or misconfigured (wrong keys, access denied)."""
