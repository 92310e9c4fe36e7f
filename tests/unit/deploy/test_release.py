"""The install bundle (deploy/release.py): a hash lock pip accepts, one file, and the release procedure.

The wheels here are tiny stand-ins made by this test (a real build is the systemd tier's: its image
installs the bundle the release command builds from this checkout, as the stacks' user data does).
pip's hash-checking install is run for real against them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nat_ha_release", REPO / "deploy" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wheel(directory: Path, name: str, version: str, tags: str = "py3-none-any") -> Path:
    """A minimal installable wheel: one module and its dist-info."""
    dist = f"{name}-{version}"
    path = directory / f"{dist}-{tags}.whl"
    files = {
        f"{name}.py": "VALUE = 1\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tags}\n",
    }
    record = [f"{n},sha256=,{len(t)}" for n, t in files.items()] + [f"{dist}.dist-info/RECORD,,"]
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, t in files.items():
            z.writestr(n, t)
    return path


def test_the_lock_names_every_wheel_with_its_hash_and_pip_installs_only_that(tmp_path: Path) -> None:
    rel = release()
    wheels = [wheel(tmp_path, "nat_ha", "9.9.9"), wheel(tmp_path, "tiny_dep", "1.0")]
    out = rel.bundle(wheels, tmp_path / "dist", "9.9.9")
    assert out.name == "nat-ha-9.9.9-bundle.tar.gz"
    again = rel.bundle(wheels, tmp_path / "again", "9.9.9")
    assert out.read_bytes() == again.read_bytes(), "the bundle's bytes depend on the wheels only"
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == sorted(["requirements.lock", *(f"wheels/{w.name}" for w in wheels)])
        tar.extractall(unpacked, filter="data")
    lock = (unpacked / "requirements.lock").read_text().splitlines()[1:]
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    assert lock == [f"nat-ha==9.9.9 --hash=sha256:{digest}", lock[1]] and lock[1].startswith("tiny-dep==1.0 --hash=")

    def install(target: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
               str(unpacked / "wheels"), "--require-hashes", "--target", str(target), "-r",
               str(unpacked / "requirements.lock")]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    done = install(tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "tiny_dep.py").exists()
    # A wheel changed after the lock was written is refused, and nothing is installed.
    bad = unpacked / "wheels" / wheels[1].name
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr("extra.py", "X = 2\n")
    refused = install(tmp_path / "site2")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr.upper()
    assert not (tmp_path / "site2" / "tiny_dep.py").exists()


def test_platform_wheels_and_a_missing_nat_ha_are_refused(tmp_path: Path) -> None:
    rel = release()
    with pytest.raises(rel.ReleaseError, match="not pure Python"):
        rel.lock_text([wheel(tmp_path, "nat_ha", "1.0"), wheel(tmp_path, "fast", "1.0", "cp311-cp311-linux_x86_64")])
    with pytest.raises(rel.ReleaseError, match="no nat-ha wheel"):
        rel.lock_text([wheel(tmp_path, "other", "1.0")])


def test_the_release_procedure_is_checked(tmp_path: Path) -> None:
    rel = release()
    assert rel.version() == __import__("agent").__version__
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\n## [1.2.3] - 2026-01-01\n")
    assert rel.check_procedure(tmp_path, "1.2.3", allow_dirty=True) == []
    assert rel.check_procedure(tmp_path, "1.2.4", allow_dirty=True) == ["CHANGELOG.md has no '## [1.2.4]' section"]
    # This checkout's own version has its CHANGELOG section (what `release.py` checks first).
    assert rel.check_procedure(REPO, rel.version(), allow_dirty=True) == []


def test_a_bad_upload_destination_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "release.py"), "--allow-dirty", "--upload", "ftp://x", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr == "release: --upload: 'ftp://x' is not s3://bucket/prefix/\n"  # checked before building


def test_upload_copies_the_bundle_to_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--upload (moto's S3 in-process): the bundle at s3://bucket/prefix/<name>, byte for byte."""
    moto = pytest.importorskip("moto")
    import boto3

    rel = release()
    out = rel.bundle([wheel(tmp_path, "nat_ha", "9.9.9")], tmp_path / "dist", "9.9.9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="my-bucket")
        assert rel.upload(out, "s3://my-bucket/nat-ha/") == f"s3://my-bucket/nat-ha/{out.name}"
        got = boto3.client("s3").get_object(Bucket="my-bucket", Key=f"nat-ha/{out.name}")["Body"].read()
        assert got == out.read_bytes()
        with pytest.raises(rel.ReleaseError, match="upload to s3://no-such-bucket/"):
            rel.upload(out, "s3://no-such-bucket")
