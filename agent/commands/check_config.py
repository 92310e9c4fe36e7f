"""``nat-ha check-config``: print the effective config and every problem with its key."""

from __future__ import annotations

import argparse
import sys

from agent.config import DEFAULT_PATH, ConfigError, ConfigFileError, effective_toml, load, reference_markdown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when the config is valid")
    p.add_argument("--reference", action="store_true", help="print the key-by-key reference (Markdown) and exit")


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
    if not args.quiet:
        print(f"# effective configuration of {args.config}: valid", end="\n")
        print(effective_toml(config), end="")
    return 0
