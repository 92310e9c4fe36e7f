"""Where the deploy files (units, IAM policies, templates, bootstrap) and the dashboards are.

The wheel carries ``deploy/`` as the package ``agent.deploy`` and ``dashboards/`` as
``agent.dashboards`` (pyproject's package-dir), so an installed nat-ha has them beside its code;
a source checkout has them at the top of the repository. One function answers for both, so
``nat-ha iam-policy`` renders the same file a checkout's tests read.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
KINDS = ("deploy", "dashboards")


def location(kind: str) -> Path:
    """The directory of ``kind`` (deploy or dashboards): the installed package's, else the checkout's."""
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not one of {', '.join(KINDS)}")
    for found in (_HERE / kind, _HERE.parent / kind):  # installed (agent/deploy), a checkout (deploy/)
        if (found / "README.md").is_file():
            return found
    raise FileNotFoundError(f"the {kind} files are not installed (no {_HERE / kind}, no {_HERE.parent / kind})")


def read(kind: str, relative: str) -> str:
    """One file of ``kind``, e.g. ``read("deploy", "iam/nat-ha-policy.json")``."""
    return (location(kind) / relative).read_text(encoding="utf-8")
