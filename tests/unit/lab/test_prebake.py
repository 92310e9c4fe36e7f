"""The systemd lab takes an image baked ahead only when it is this lab's and still there (agent.lab.nspawn).

tests/run-all.sh bakes the image while the earlier tiers run and names its record in
NAT_HA_PREBAKED_IMAGE; anything else - no variable, a failed bake, another group or table, a layer or
bundle gone, a bundle rebuilt since - must make the lab bake its own, never boot containers on a stale
or missing image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.lab import nspawn


def _baked(tmp_path: Path, group: str = "lab", table: str = "nat-ha") -> tuple[Path, nspawn.Image]:
    layer = tmp_path / "layer"
    layer.mkdir()
    bundle = tmp_path / "nat-ha-0.1.0-bundle.tar.gz"
    bundle.write_bytes(b"bundle")
    sha = hashlib.sha256(b"bundle").hexdigest()
    image = nspawn.Image(tmp_path / "rootfs", layer, nspawn.Bundle(bundle, sha), "log", 1,
                         [{"Status": "FAILURE"}])  # fmt: skip
    record = tmp_path / "image.json"
    image.save(record, group, table)
    return record, image


def test_the_record_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record, image = _baked(tmp_path)
    monkeypatch.setenv(nspawn.PREBAKED_ENV, str(record))
    assert nspawn.prebaked_image("lab", "nat-ha", log=lambda _m: None) == image


def test_without_the_variable_the_lab_bakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _baked(tmp_path)
    monkeypatch.delenv(nspawn.PREBAKED_ENV, raising=False)
    assert nspawn.prebaked_image("lab", "nat-ha", log=lambda _m: None) is None


def test_a_failed_bake_another_lab_a_missing_layer_or_a_changed_bundle_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    monkeypatch.setenv(nspawn.PREBAKED_ENV, str(tmp_path / "never-written.json"))
    assert nspawn.prebaked_image("lab", "nat-ha", log=said.append) is None
    record, image = _baked(tmp_path)
    monkeypatch.setenv(nspawn.PREBAKED_ENV, str(record))
    assert nspawn.prebaked_image("other-group", "nat-ha", log=said.append) is None
    assert nspawn.prebaked_image("lab", "other-table", log=said.append) is None
    image.bundle.path.unlink()
    assert nspawn.prebaked_image("lab", "nat-ha", log=said.append) is None
    image.bundle.path.write_bytes(b"rebuilt by another bake")
    assert nspawn.prebaked_image("lab", "nat-ha", log=said.append) is None
    image.bundle.path.write_bytes(b"bundle")
    assert nspawn.prebaked_image("lab", "nat-ha", log=said.append) == image
    image.layer.rmdir()
    assert nspawn.prebaked_image("lab", "nat-ha", log=said.append) is None
    assert len(said) == 6 and all("baking here" in m for m in said), said
