"""One shared botocore session per process, loading trimmed service models.

Why: botocore's EC2 model (``ec2/2016-11-15/service-2.json``) describes ~750
operations; parsing it costs the agent ~21 MB of RSS, a third of its footprint
on a 512 MB t4g.nano, for the six EC2 operations it calls. So the session's
loader searches a directory of *trimmed* models first: a copy of the EC2 and
DynamoDB models with only the operations in :data:`agent.aws.calls.ALL_CALLS` and
the shapes they reach (documentation strings dropped). Likewise ``endpoints.json``
(~7 MB parsed) is replaced by a copy with only nat-ha's services (every partition
and region kept). The endpoint rule sets, retry and default configuration still
come from botocore's own data, so endpoint resolution and signing are unchanged.

The trimmed copy is made once per botocore version and operation list (both are
in the directory name, so an upgrade or a new call regenerates it), in a child
process so the full model never inflates the agent's own peak RSS, into the first
writable of: ``$NAT_HA_MODEL_CACHE``, ``$CACHE_DIRECTORY`` (systemd's
``CacheDirectory=nat-ha``), ``$XDG_CACHE_HOME/nat-ha`` or ``~/.cache/nat-ha``, and
a per-user directory in the temporary directory. If that fails, the full models are
used (correct, only bigger) and a warning is logged. ``NAT_HA_FULL_AWS_MODELS=1``
turns trimming off.

``python -m agent.aws.models DIR`` writes the trimmed models under ``DIR`` (what the
child process runs; also usable at image build time with ``NAT_HA_MODEL_CACHE=DIR``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("nat_ha.awsmodels")

FORMAT = "2"  # bump when the trimming below changes
CACHE_ENV = "NAT_HA_MODEL_CACHE"
FULL_ENV = "NAT_HA_FULL_AWS_MODELS"
SERVICES = ("ec2", "dynamodb")
# Not named endpoints.json, so the loader never finds it: it is handed to the session's
# endpoint resolver as botocore's own data (see _use_trimmed_endpoints).
ENDPOINTS_FILE = "endpoints-trimmed.json"
# Kept in the trimmed endpoints besides SERVICES: STS, which botocore's credential chain may call.
ENDPOINT_SERVICES = ("sts",)


def trimmed_operations() -> dict[str, frozenset[str]]:
    """Service -> the operations nat-ha may call (agent and admin commands)."""
    from agent.aws.calls import ALL_CALLS

    return {s: frozenset(op for svc, op in ALL_CALLS if svc == s) for s in SERVICES}


def _key() -> str:
    import botocore

    ops = trimmed_operations()
    text = json.dumps({s: sorted(v) for s, v in sorted(ops.items())} | {"format": FORMAT}, sort_keys=True)
    return f"botocore-{botocore.__version__}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def trim_model(model: dict[str, Any], operations: Iterable[str]) -> dict[str, Any]:
    """A copy of a service model with only ``operations`` and the shapes they reach, without docs."""
    wanted = sorted(set(operations))
    missing = [op for op in wanted if op not in model["operations"]]
    if missing:
        raise KeyError(f"{model['metadata'].get('serviceId')}: no such operations {missing}")
    shapes: dict[str, Any] = model["shapes"]
    keep: set[str] = set()
    todo: list[str] = []
    ops: dict[str, Any] = {}
    for name in wanted:
        op = {k: v for k, v in model["operations"][name].items() if k != "documentation"}
        ops[name] = op
        for ref in [op.get("input"), op.get("output"), *op.get("errors", [])]:
            if ref and "shape" in ref:
                todo.append(ref["shape"])
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        shape = shapes[name]
        refs = list(shape.get("members", {}).values())
        refs += [shape[k] for k in ("member", "key", "value") if k in shape]
        todo.extend(ref["shape"] for ref in refs if "shape" in ref)

    def no_docs(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: no_docs(v) for k, v in value.items() if k != "documentation"}
        return value

    return {
        "version": model.get("version", "2.0"),
        "metadata": model["metadata"],
        "operations": ops,
        "shapes": {name: no_docs(shapes[name]) for name in sorted(keep)},
    }


def write_trimmed(root: Path) -> Path:
    """Write the trimmed models under ``root/<key>`` (atomically per file); returns that directory."""
    import botocore.loaders

    target = root / _key()
    loader = botocore.loaders.create_loader()  # botocore's own data only
    prefixes = set(ENDPOINT_SERVICES)
    for service, operations in trimmed_operations().items():
        version = loader.determine_latest_version(service, "service-2")
        model = loader.load_service_model(service, "service-2", version)
        prefixes.add(model["metadata"].get("endpointPrefix", service))
        _write_json(target / service / version / "service-2.json", trim_model(model, operations))
    # Written last: its presence marks the directory complete.
    _write_json(target / ENDPOINTS_FILE, trim_endpoints(loader.load_data("endpoints"), prefixes))
    return target


def trim_endpoints(endpoints: dict[str, Any], services: Iterable[str]) -> dict[str, Any]:
    """botocore's ``endpoints.json`` with every partition and region, but only ``services``."""
    keep = set(services)
    return {
        **endpoints,
        "partitions": [
            {**p, "services": {k: v for k, v in p.get("services", {}).items() if k in keep}}
            for p in endpoints["partitions"]
        ],
    }


def _write_json(out: Path, data: Any) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the models are public data
    os.replace(tmp, out)


def _complete(directory: Path) -> bool:
    return (directory / ENDPOINTS_FILE).is_file() and all(
        any(directory.glob(f"{s}/*/service-2.json")) for s in SERVICES
    )


def _cache_roots() -> list[Path]:
    roots: list[Path] = []
    if os.environ.get(CACHE_ENV):
        roots.append(Path(os.environ[CACHE_ENV]))
    if os.environ.get("CACHE_DIRECTORY"):  # systemd CacheDirectory= (may list several, ':'-separated)
        roots.append(Path(os.environ["CACHE_DIRECTORY"].split(":")[0]))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots.append(Path(xdg) / "nat-ha")
    roots.append(Path(tempfile.gettempdir()) / f"nat-ha-{os.getuid()}")
    return roots


def trimmed_models_dir() -> Path | None:
    """The directory of trimmed models for this botocore, made on first use; None if impossible."""
    key = _key()
    errors: list[str] = []
    for root in _cache_roots():
        directory = root / key
        if _complete(directory):
            return directory
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(root, os.W_OK):
                raise PermissionError(f"{root} is not writable")
            # A child process parses the full models, so their ~25 MB never count in our RSS.
            done = subprocess.run(
                [sys.executable, "-m", "agent.aws.models", str(root)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode == 0 and _complete(directory):
                log.info("wrote trimmed AWS service models to %s", directory)
                return directory
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            errors.append(f"{root}: {last}")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{root}: {exc}")
    log.warning("cannot write trimmed AWS service models, using botocore's full ones (%s)", "; ".join(errors))
    return None


def models_ready() -> bool:
    """True when :func:`botocore_session` starts no child process (models trimmed already, or trimming off)."""
    if os.environ.get(FULL_ENV, "") in ("1", "true", "yes"):
        return True
    key = _key()
    return any(_complete(root / key) for root in _cache_roots())


def plain_session() -> Any:
    """A botocore session on botocore's own models (no trimming): for a client needed before they are made."""
    import botocore.session

    session = botocore.session.get_session()
    _fixed_user_agent(session)
    return session


@functools.lru_cache(maxsize=1)
def botocore_session() -> Any:
    """The process's botocore session (EC2 client and pynamodb share it, so data loads once)."""
    import botocore.session

    session = botocore.session.get_session()
    _fixed_user_agent(session)
    if os.environ.get(FULL_ENV, "") not in ("1", "true", "yes"):
        directory = trimmed_models_dir()
        if directory is not None:
            # Searched before botocore's data: only <service>/<version>/service-2.json is there.
            session.get_component("data_loader").search_paths.insert(0, str(directory))
            _use_trimmed_endpoints(session, directory / ENDPOINTS_FILE)
    return session


def _fixed_user_agent(session: Any) -> None:
    """One fixed User-Agent for every client of the session (pynamodb's included).

    botocore otherwise rebuilds and sanitises a 14-part user-agent string twice per
    request, about a fifth of the CPU of a DynamoDB call; a fixed string (which also
    names nat-ha to AWS) skips that. pynamodb's own client Config does not set a user
    agent, so the session's default applies to it too.
    """
    import platform

    import botocore
    from botocore.config import Config

    from agent import __version__

    ua = f"nat-ha/{__version__} botocore/{botocore.__version__} Python/{platform.python_version()}"
    session.set_default_client_config(Config(user_agent=ua))


def _use_trimmed_endpoints(session: Any, path: Path) -> None:
    """Give the session an endpoint resolver on the trimmed ``endpoints.json`` (saves ~7 MB).

    botocore parses its whole ``endpoints.json`` (1.2 MB: every service in every
    partition) for the legacy endpoint resolver. The trimmed copy keeps every partition
    and region but only nat-ha's services, and is marked as botocore's built-in data,
    which it is: so endpoints still come from the rule sets exactly as with the full
    file (a resolver on non-built-in data would change how endpoints are chosen).
    This uses botocore's internal component registry; if that ever changes, the
    full file is used (bigger, still correct).
    """
    from botocore.regions import EndpointResolver

    register = getattr(session, "_register_internal_component", None)
    if register is None:
        log.info("botocore has no internal component registry; using its full endpoints.json")
        return
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    register("endpoint_resolver", EndpointResolver(data, uses_builtin_data=True))


ENSURE = "--ensure"


def main(argv: list[str] | None = None) -> int:
    """``DIR``: write the trimmed models under DIR. ``--ensure``: make them in the cache if missing.

    ``--ensure`` is what an agent exiting for a restart runs (agent/handoff.py): the child runs
    the code installed *now* (after an upgrade: the new botocore and call list), so the next
    process finds its models made.
    """
    args = sys.argv[1:] if argv is None else argv
    if args == [ENSURE]:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        directory = trimmed_models_dir()
        print(f"AWS service models for the next agent process: {directory or 'botocore full models'}", flush=True)
        return 0
    if len(args) != 1:
        print(f"usage: python -m agent.aws.models DIR | {ENSURE}", file=sys.stderr)
        return 2
    print(write_trimmed(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
