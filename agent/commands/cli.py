"""The ``nat-ha`` command: one entry point, one module per subcommand.

Subcommand modules keep their heavy imports (botocore, pynamodb, moto) inside
``run()``, so ``nat-ha --help`` and ``check-config`` stay fast and light. Every failure a user can cause ends in one
clear line on stderr and exit code 2 (bad input) or 1 (the world said no), never
a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent.commands.daemon", "run the HA agent (the systemd service)"),
    "check-config": ("agent.commands.check_config", "validate a config file and print the effective config"),
    "init-table": ("agent.commands.init_table", "create the DynamoDB table (idempotent)"),
    "status": ("agent.commands.status", "show the group: members, health, owners, terms, EC2 routes"),
    "drain": ("agent.commands.control", "hand every route table of an instance to healthy peers"),
    "switchover": ("agent.commands.control", "move one route table to a named instance"),
    "iam-policy": ("agent.commands.iam_policy", "print the IAM policy for a group and table, ready to attach"),
    "files": ("agent.commands.iam_policy", "print where the deploy files (units, policies, templates) are installed"),
    "wait-healthy": ("agent.commands.boot", "wait until this NAT's agent is healthy as its peers see it (first boot)"),
    "signal": ("agent.commands.boot", "signal CloudFormation that this NAT's bootstrap succeeded or failed"),
    "claim-address": ("agent.commands.boot", "associate this NAT's own Elastic IP once no other instance has it"),
    "setup-nat": ("agent.commands.setup_nat", "configure this host as a NAT (ip_forward, masquerade), idempotently"),
    "ctsync": ("agent.commands.ctsync", "run the connection-sync service: established flows follow their table"),
    "demo": ("agent.commands.demo", "run a 3-AZ NAT group on this machine (moto) and kill one NAT"),
}


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nat-ha",
        description="High availability for AWS VPC NAT instances.",
        epilog="Run `nat-ha COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"nat-ha {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        if hasattr(module, f"add_arguments_{name.replace('-', '_')}"):
            getattr(module, f"add_arguments_{name.replace('-', '_')}")(p)
        else:
            module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    runner = getattr(module, f"run_{args.command.replace('-', '_')}", None) or module.run
    from agent.config import ConfigError
    from coordinator.errors import CoordinatorError

    try:
        return int(runner(args))
    except UsageError as exc:
        print(f"nat-ha {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for line in exc.problems:
            print(f"nat-ha {args.command}: {line}", file=sys.stderr)
        return 2
    except CoordinatorError as exc:
        print(f"nat-ha {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nat-ha {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the imported module, not __main__: subcommands raise agent.commands.cli.UsageError.
    from agent.commands.cli import main as _main

    sys.exit(_main())
