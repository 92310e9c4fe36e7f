"""Finding the host's tools (nft, iptables, ip) where they live, not only where PATH says.

Debian and Ubuntu install nftables and iptables in /usr/sbin, which is not on an ordinary
user's PATH (nor on some cron or sudo paths): a plain PATH lookup said "neither nft nor
iptables is installed" on a host that had both.
"""

from __future__ import annotations

import os
import shutil

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find(name: str) -> str | None:
    """Full path of the command ``name``: on PATH, else in the sbin directories; None if absent."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def argv(command: list[str]) -> list[str] | None:
    """``command`` with its program resolved by :func:`find`; None when the program is not installed."""
    path = find(command[0])
    return None if path is None else [path, *command[1:]]
