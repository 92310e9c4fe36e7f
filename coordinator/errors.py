"""Typed errors of the coordination layer.

No raw botocore or pynamodb exception crosses this package's boundary: the agent
decides what to do from the type alone (stop acting, retry next cycle, report).
"""

from __future__ import annotations

import re


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
    """The table is missing or misconfigured (wrong keys, access denied); ``code`` is AWS's error code."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


_PYNAMO_WRAPPER = re.compile(
    r"^(?:Failed to [^:]*: )?An error occurred \([^)]*\)(?: on request \([^)]*\))?(?: on table \([^)]*\))?"
    r" when calling the \w+ operation(?: \(reached max retries: \d+\))?: ",
    re.DOTALL,
)
_PYNAMO_PREFIX = re.compile(r"^Failed to [a-z ]+: ")
_HTML = re.compile(r"<\s*(?:!doctype|html|head|body|title)\b", re.IGNORECASE)
_TITLE = re.compile(r"<\s*(title|h1)[^>]*>(.*?)<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
MESSAGE_CHARS = 200  # an AWS error text echoed in a one-line error is cut here


def readable(text: str, limit: int = MESSAGE_CHARS) -> str:
    """An AWS error text as one short readable line.

    pynamodb wraps botocore's text ("Failed to query items: An error occurred (X) on request (...)
    on table (t) when calling the Query operation: <message>"), which repeats what our own line
    says: only the message is kept. An endpoint that is not AWS (a proxy, a web server) answers
    with an HTML page: its title stands for it, never the page.
    """
    text = _PYNAMO_WRAPPER.sub("", text.strip())
    text = _PYNAMO_PREFIX.sub("", text)
    if _HTML.search(text):
        found = _TITLE.search(text)
        title = " ".join(_TAG.sub(" ", found.group(2)).split()) if found else ""
        page = f"an HTML page ({title})" if title else "an HTML page"
        text = f"the endpoint answered with {page}, not an AWS API response"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
