"""Every finished pyramid carries a manifest (source, fingerprint, parameters, versions,
a checksum per level) and `scalereg validate` verifies the data against it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import phantom
from scalereg.cli import main
from scalereg.convert import convert_volume
from scalereg.omezarr import validate_pyramid
from scalereg.omezarr.create_pyramid_store import STATUS_KEY
from scalereg.omezarr.level_checksums import compute_level_checksum

OPTIONS = dict(spacing=(2.0, 1.0, 1.0), orientation="asr", chunks=16, min_size=8)


@pytest.fixture
def source(tmp_path):
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((50, 90, 70), "uint16"))
    return str(raw)


def _manifest(path) -> dict:
    return zarr.open_group(str(path), mode="r").attrs[STATUS_KEY]["manifest"]


def test_manifest_records_source_parameters_versions_and_level_checksums(source, tmp_path):
    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), memory_budget="256KiB", **OPTIONS)
    manifest = _manifest(out)
    group = zarr.open_group(str(out), mode="r")
    assert manifest["source"] == source and manifest["fingerprint"] == group.attrs[STATUS_KEY]["fingerprint"]
    assert manifest["parameters"]["chunks"] == [16, 16, 16] and manifest["parameters"]["method"] == "gaussian"
    assert manifest["versions"]["zarr"] == zarr.__version__ and manifest["written_by"].startswith("scalereg ")
    assert len(manifest["levels"]) >= 3  # level 1 is written fused with level 0: its checksum too
    for level in manifest["levels"]:
        assert level["checksum"] == compute_level_checksum(group[level["path"]])
    assert validate_pyramid(str(out)) == []


def test_checksums_do_not_depend_on_the_tiling(source, tmp_path):
    small, large = tmp_path / "small.ome.zarr", tmp_path / "large.ome.zarr"
    a = convert_volume(source, str(small), memory_budget="256KiB", **OPTIONS)
    b = convert_volume(source, str(large), memory_budget="64MiB", **OPTIONS)
    assert a["levels"][0]["blocks"] > b["levels"][0]["blocks"]
    assert [l["checksum"] for l in _manifest(small)["levels"]] == [l["checksum"] for l in _manifest(large)["levels"]]


def test_validate_finds_a_changed_chunk_and_names_the_level(source, tmp_path, capsys):
    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), **OPTIONS)
    level1 = zarr.open_array(str(out / "1"), mode="r+")
    level1[3, 4, 5] = level1[3, 4, 5] + 1  # one voxel: a silently corrupted chunk
    problems = validate_pyramid(str(out))
    assert problems == ["level 1: data differ from the checksum in the manifest (changed or corrupted since it was written)"]
    assert validate_pyramid(str(out), checksums=False) == []
    assert main(["validate", str(out)]) == 1
    assert "level 1: data differ" in capsys.readouterr().out


def test_a_removed_chunk_is_found(source, tmp_path):
    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), **OPTIONS)
    chunk = next(p for p in sorted((out / "0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()  # zarr reads a missing chunk as the fill value: only the checksum notices
    assert any(p.startswith("level 0: data differ") for p in validate_pyramid(str(out)))
    assert np.asarray(zarr.open_array(str(out / "0"))[:]).shape == (50, 90, 70)
