#!/usr/bin/env python3
"""Point the runbook links of nat-ha's alert rules (or its Grafana dashboard) at your own copy of the runbook.

Every alert's ``runbook_url`` is ``<base>#<alert name in lower case>``, and the shipped base is
dashboards/runbook.md in nat-ha's repository. Put the runbook where your on-call looks (a wiki
page, your fork) and install the rules through this script:

    python3 dashboards/runbook_base.py https://wiki.example.com/ops/nat-ha-runbook \\
        > /etc/prometheus/rules/nat-ha.yml
    python3 dashboards/runbook_base.py --file dashboards/grafana/nat-ha.json \\
        https://wiki.example.com/ops/nat-ha-runbook > nat-ha.json

The page must keep the runbook's section anchors (GitHub's: the heading in lower case); a
``{alert}`` in the base is replaced by the alert's name instead, for wikis with one page per
alert (``https://wiki.example.com/ops/nat-ha/{alert}``). Python's standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

SHIPPED = "https://github.com/nat-ha/nat-ha/blob/main/dashboards/runbook.md"
HERE = Path(__file__).resolve().parent
LINK = re.compile(re.escape(SHIPPED) + r"(#([a-z0-9-]+))?")


def rewrite(text: str, base: str) -> tuple[str, int]:
    """``text`` with every link to the shipped runbook pointing at ``base``; and how many were rewritten."""
    base = base.rstrip("#")

    def one(m: re.Match[str]) -> str:
        anchor = m.group(2) or ""
        if "{alert}" in base:
            return base.replace("{alert}", anchor)
        return base + (f"#{anchor}" if anchor else "")

    return LINK.subn(one, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Point nat-ha's runbook links at your own copy of the runbook.")
    p.add_argument("base", help="the runbook's address, e.g. https://wiki.example.com/ops/nat-ha-runbook")
    p.add_argument(
        "--file",
        default=str(HERE / "prometheus" / "alerts.yml"),
        help="the file to rewrite (default: the alert rules); the result goes to standard output",
    )
    args = p.parse_args(argv)
    url = urlparse(args.base.replace("{alert}", "x"))
    if url.scheme not in ("http", "https") or not url.netloc or any(c.isspace() for c in args.base):
        print(f"runbook_base: {args.base!r} is not an http(s) address", file=sys.stderr)
        return 2
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"runbook_base: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out, count = rewrite(text, args.base)
    if count == 0:
        print(f"runbook_base: {args.file} has no link to {SHIPPED}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
