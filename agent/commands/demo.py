"""``nat-ha demo``: a NAT group on this machine, one NAT killed, every step shown.

The argument checks live here; the demos themselves are in ``agent.lab.demo`` (agents on
loopback, moto server as AWS) and ``agent.lab.netdemo`` (``--netns``: network namespaces,
real packets, root only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from agent.commands.cli import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", type=int, default=3, help="NAT instances in the group, 2 to 5 (default 3)")
    p.add_argument("--workdir", help="keep configs and agent logs here (default: a temporary folder, removed)")
    p.add_argument("--timeout", type=float, default=90.0, help="give up after this many seconds (default 90)")
    p.add_argument("--plain", action="store_true", help="plain text output (no colours)")
    p.add_argument(
        "--keep",
        action="store_true",
        help="after the story, keep the group running to try nat-ha status, history, pause... on it (Ctrl-C ends it)",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help="root only: real NATs in network namespaces, real packets; show the private host's ping",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "netns", False):
        return _netns(args)
    if not 2 <= args.nats <= 5:
        raise UsageError("--nats must be between 2 and 5")
    if args.timeout <= 10:
        raise UsageError("--timeout must be more than 10 seconds")
    from agent.lab import demo

    try:
        import moto  # noqa: F401
    except ImportError:
        print("nat-ha demo: needs moto: pip install 'nat-ha[demo]'", file=sys.stderr)
        return 2
    if args.workdir:
        return demo.main(Path(args.workdir), args)
    with tempfile.TemporaryDirectory(prefix="nat-ha-demo-") as tmp:
        return demo.main(Path(tmp), args)


def _netns(args: argparse.Namespace) -> int:
    from agent.lab import netdemo
    from agent.lab.netlab import skip_reason

    reason = skip_reason()
    if reason:
        print(f"nat-ha demo --netns: {reason}", file=sys.stderr)
        return 2
    if args.workdir:
        return netdemo.main(Path(args.workdir), args.timeout)
    with tempfile.TemporaryDirectory(prefix="nat-ha-netdemo-") as tmp:
        return netdemo.main(Path(tmp), args.timeout)
