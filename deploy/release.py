#!/usr/bin/env python3
"""Build the nat-ha install bundle: this checkout's wheel, its dependencies' wheels, a hash lock.

Usage (from a checkout of the release tag, with pip and, for --upload, boto3):

    python deploy/release.py                      # dist/nat-ha-VERSION-bundle.tar.gz and its sha256
    python deploy/release.py --upload s3://my-bucket/nat-ha/   # the same, copied to S3

The bundle is one file: ``wheels/*.whl`` (nat-ha and every dependency, all pure Python, so one
bundle serves arm64 and x86_64) and ``requirements.lock`` (``name==version --hash=sha256:...`` for
each wheel). The stacks' bootstrap downloads it (``NatHaArtifact``), checks its sha256
(``NatHaArtifactSha256``) and installs with ``pip install --no-index --require-hashes -r
requirements.lock``: nothing comes from a package index at boot, and nothing but what was hashed
here is installed. The same bundle installs by hand (deploy/README.md, "Installing by hand").

Before building it checks the release procedure (deploy/README.md, "Releasing"): CHANGELOG.md has
a section for the version, and (unless --allow-dirty) the tree is clean and tagged vVERSION.
Every failure is one line on stderr and exit 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<tags>[^-]+-[^-]+-[^-]+)\.whl$")
PURE_TAGS = ("-none-any",)
MTIME = 315532800  # 1980-01-01: the tarball's bytes depend on the wheels only


class ReleaseError(Exception):
    """The release cannot be built or published; one line."""


def version(repo: Path = REPO) -> str:
    """agent.__version__, read without importing the package."""
    text = (repo / "agent" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise ReleaseError("agent/__init__.py has no __version__ line")
    return m.group(1)


def check_procedure(repo: Path, ver: str, allow_dirty: bool) -> list[str]:
    """What the release procedure requires and the checkout lacks (one line each)."""
    problems = []
    changelog = repo / "CHANGELOG.md"
    if not changelog.exists() or not re.search(rf"^## \[{re.escape(ver)}\]", changelog.read_text(), re.M):
        problems.append(f"CHANGELOG.md has no '## [{ver}]' section")
    if allow_dirty:
        return problems
    git = ["git", "-C", str(repo)]
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=False).stdout
    if dirty.strip():
        problems.append("the working tree has uncommitted changes (commit them, or --allow-dirty for a test build)")
    tags = subprocess.run([*git, "tag", "--points-at", "HEAD"], capture_output=True, text=True, check=False).stdout
    if f"v{ver}" not in tags.split():
        problems.append(f"HEAD is not tagged v{ver} (git tag -a v{ver} -m 'nat-ha {ver}')")
    return problems


def build_wheels(repo: Path, dest: Path) -> list[Path]:
    """nat-ha's wheel and its dependencies' (from pip's configured index), in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nat-ha-release-") as tmp:
        # From a clean copy: setuptools' build/ in a checkout would keep files deleted since.
        src = Path(tmp) / "src"
        junk = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "node_modules")
        shutil.copytree(repo, src, ignore=junk)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f"rc {proc.returncode}"]
        raise ReleaseError(f"pip wheel failed: {last[0].strip()}")
    return sorted(dest.glob("*.whl"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def lock_text(wheels: list[Path]) -> str:
    """``requirements.lock``: one ``name==version --hash=sha256:...`` per wheel (pip's hash-checking mode)."""
    lines = ["# nat-ha bundle: pip install --no-index --find-links wheels --require-hashes -r requirements.lock"]
    names = set()
    for wheel in sorted(wheels, key=lambda p: p.name.lower()):
        m = WHEEL_RE.match(wheel.name)
        if not m:
            raise ReleaseError(f"{wheel.name}: not a wheel file name")
        if not m.group("tags").endswith(PURE_TAGS):
            raise ReleaseError(f"{wheel.name}: not pure Python; the bundle would only install on this platform")
        name = re.sub(r"[-_.]+", "-", m.group("name")).lower()
        if name in names:
            raise ReleaseError(f"{wheel.name}: two wheels of {name}")
        names.add(name)
        lines.append(f"{name}=={m.group('version')} --hash=sha256:{sha256(wheel)}")
    if "nat-ha" not in names:
        raise ReleaseError("no nat-ha wheel among the wheels")
    return "\n".join(lines) + "\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def bundle(wheels: list[Path], out: Path, ver: str) -> Path:
    """The bundle tarball (deterministic: sorted members, fixed times and owners)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"nat-ha-{ver}-bundle.tar.gz"
    lock = lock_text(wheels).encode()
    tmp = path.with_suffix(".partial")
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "requirements.lock", lock)
        for wheel in sorted(wheels, key=lambda p: p.name):
            _add(tar, f"wheels/{wheel.name}", wheel.read_bytes())
    os.replace(tmp, path)
    return path


def s3_destination(destination: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix); checked before anything is built."""
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/?(.*)", destination)
    if not m:
        raise ReleaseError(f"--upload: {destination!r} is not s3://bucket/prefix/")
    return m.group(1), m.group(2)


def upload(path: Path, destination: str) -> str:
    """Copy the bundle to ``s3://bucket/prefix/`` (boto3, your credentials); returns its s3:// URL."""
    bucket, prefix = s3_destination(destination)
    key = (prefix.rstrip("/") + "/" if prefix else "") + path.name
    try:
        import boto3
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ReleaseError("--upload needs boto3 (pip install boto3), or copy the file yourself") from None
    try:
        boto3.client("s3").upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise ReleaseError(f"upload to s3://{bucket}/{key} failed: {exc}") from None
    return f"s3://{bucket}/{key}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=REPO / "dist", help="where the bundle is written (default dist/)")
    p.add_argument("--upload", metavar="S3_URL", help="also copy it to s3://bucket/prefix/")
    p.add_argument("--allow-dirty", action="store_true", help="build from an untagged or modified tree (tests)")
    args = p.parse_args(argv)
    try:
        if args.upload:
            s3_destination(args.upload)
        ver = version()
        problems = check_procedure(REPO, ver, args.allow_dirty)
        if problems:
            raise ReleaseError("; ".join(problems))
        with tempfile.TemporaryDirectory(prefix="nat-ha-wheels-") as tmp:
            path = bundle(build_wheels(REPO, Path(tmp)), args.out, ver)
        digest = sha256(path)
        (path.parent / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
        where = upload(path, args.upload) if args.upload else str(path)
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    print(f"{path}\nsha256 {digest}")
    print(f"stack parameters: NatHaArtifact={where} NatHaArtifactSha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
