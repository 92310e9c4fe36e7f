"""``nat-ha check-config``: print the effective config and every problem with its key."""

from __future__ import annotations

import argparse
import sys

from agent.config import DEFAULT_PATH, ConfigError, ConfigFileError, effective_toml, load, reference_markdown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when the config is valid")
    p.add_argument("--reference", action="store_true", help="print the key-by-key reference (Markdown) and exit")
    p.add_argument(
        "--discover",
        action="store_true",
        help="with members_from_tags: also find the members in EC2 (read-only calls) and check them as the agent "
        "and `nat-ha status` do (egress addresses included)",
    )


def run(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown(), end="")
        return 0
    try:
        config = load(args.config)
    except ConfigError as exc:
        # A key's problem is prefixed with the file; a problem of the file itself already names it.
        prefix = "" if isinstance(exc, ConfigFileError) else f"{args.config}: "
        for line in exc.problems:
            print(f"{prefix}{line}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 2
    if args.discover and config.members_from_tags:
        from agent.runtime import resolve

        found = resolve(config, need_identity=False, operator=True)  # the agent's and status's own checks
        if found.problems:
            for line in found.problems:
                print(f"{args.config}: {line}", file=sys.stderr)
            print(f"{len(found.problems)} problem(s) found with the discovered members", file=sys.stderr)
            return 2
        config = found.config
    if not args.quiet:
        print(f"# effective configuration of {args.config}: valid", end="\n")
        if config.members_from_tags and not args.discover:
            # The same checks run once the members are known: --discover here, `nat-ha status`, the agent.
            print("# members_from_tags: the members (and with egress_ip = follow their addresses) are checked once "
                  "discovered: add --discover, or run `nat-ha status`")  # fmt: skip
        print(effective_toml(config), end="")
    return 0
