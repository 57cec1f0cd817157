"""Every finished pyramid carries a manifest (source, fingerprint, parameters, versions,
a checksum per level) and `scalereg validate` verifies the data against it."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_chunk_that_cannot_be_decoded_is_reported_by_its_index_not_raised(source, tmp_path, capsys, damage):
    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), **OPTIONS)
    chunk = out / "0" / "c" / "1" / "2" / "3"  # zarr v3 chunk key of chunk (1, 2, 3)
    data = chunk.read_bytes()
    chunk.write_bytes(b"not a compressed chunk" * 8 if damage == "garbage" else data[: len(data) // 2])
    problems = validate_pyramid(str(out))
    assert len(problems) == 1 and problems[0].startswith("level 0: chunk 1.2.3 cannot be decoded"), problems
    assert main(["validate", str(out)]) == 1
    captured = capsys.readouterr()
    assert "chunk 1.2.3 cannot be decoded" in captured.out and "Traceback" not in captured.out + captured.err


# ------------------------------------------------- transform directories and warped outputs

SMALL_SCHEDULE = {
    "name": "small",
    "steps": [
        {"spacing": 200, "transform": "rigid", "iterations": [50], "shrink_factors": [1], "smoothing_sigmas": [0]},
        {"spacing": 100, "transform": "syn", "metric": "mattes", "iterations": [10], "shrink_factors": [1], "smoothing_sigmas": [0]},
    ],
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A small registration with a SyN step (so the directory has fields), and the
    moving image warped onto the fixed grid through it."""
    from scalereg.register import register_pyramids
    from scalereg.warp.warp_volume import warp_volume

    tmp = tmp_path_factory.mktemp("integrity-transform")
    cube = phantom((48, 48, 48), "uint16")
    pyramids = {}
    for name, volume in (("fixed", cube), ("moving", np.roll(cube, (2, -2, 1), axis=(0, 1, 2)))):
        zarr.save_array(str(tmp / f"{name}.zarr"), volume)
        pyramids[name] = str(tmp / f"{name}.ome.zarr")
        convert_volume(str(tmp / f"{name}.zarr"), pyramids[name], spacing=(100.0, 100.0, 100.0), orientation="asr", chunks=16, min_size=8)
    transform = tmp / "transform"
    manifest = register_pyramids(pyramids["fixed"], pyramids["moving"], str(transform), schedule=SMALL_SCHEDULE)
    warped = tmp / "warped.ome.zarr"
    warp_volume(str(transform), pyramids["moving"], pyramids["fixed"], str(warped))
    return {"tmp": tmp, "transform": transform, "manifest": manifest, "warped": warped}


def _copy(path, tmp_path):
    import shutil

    return shutil.copytree(path, tmp_path / path.name)


def test_a_transform_manifest_records_every_file_and_field(registered, capsys):
    from scalereg.omezarr.level_checksums import compute_level_checksum as level_checksum
    from scalereg.transforms.transform_checksums import file_checksum, validate_transform_directory

    transform, manifest = registered["transform"], registered["manifest"]
    checksums = manifest["checksums"]
    assert {"forward/affine.mat", "forward/warp.nii.gz", "inverse/inverse_warp.nii.gz"} <= set(checksums["files"])
    assert {step["picture"] for step in manifest["steps"]} <= set(checksums["files"])
    for relative, checksum in checksums["files"].items():
        assert checksum == file_checksum(str(transform / relative)), relative
    assert set(checksums["fields"]) == {"field.ome.zarr", "inverse_field.ome.zarr"}
    for name, levels in checksums["fields"].items():
        # recorded from memory when written: the same as recomputed from the store
        assert levels[0]["checksum"] == level_checksum(zarr.open_array(str(transform / name / "0"))), name
    assert validate_transform_directory(str(transform)) == []
    assert main(["validate", str(transform)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    "tamper, named",
    [
        (lambda d: (d / "forward" / "affine.mat").write_bytes((d / "forward" / "affine.mat").read_bytes() + b"\0"), "forward/affine.mat: contents differ"),
        (lambda d: (d / "inverse" / "inverse_warp.nii.gz").unlink(), "inverse/inverse_warp.nii.gz: missing"),
        (lambda d: (d / "steps" / "01-rigid-200um" / "qc.png").write_bytes(b"not the picture"), "steps/01-rigid-200um/qc.png: contents differ"),
        (lambda d: zarr.open_array(str(d / "field.ome.zarr" / "0"), mode="r+").__setitem__((0, 5, 5, 5), 12.5), "field.ome.zarr level 0: data differ"),
    ],
    ids=["affine", "missing-inverse-warp", "qc-picture", "field-voxel"],
)
def test_validate_names_a_transform_file_that_changed(registered, tmp_path, capsys, tamper, named):
    transform = _copy(registered["transform"], tmp_path)
    tamper(transform)
    assert main(["validate", str(transform)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith(str(transform)), lines


def test_warped_outputs_carry_level_checksums_that_validate_checks(registered, tmp_path, capsys):
    warped = registered["warped"]
    manifest = _manifest(warped)
    assert manifest["source_identity"]["transform"] and manifest["levels"]
    group = zarr.open_group(str(warped), mode="r")
    for level in manifest["levels"]:
        assert level["checksum"] == compute_level_checksum(group[level["path"]]), level["path"]
    assert main(["validate", str(warped)]) == 0
    capsys.readouterr()
    changed = _copy(warped, tmp_path)
    level0 = zarr.open_array(str(changed / "0"), mode="r+")
    level0[10, 10, 10] = level0[10, 10, 10] + 1
    assert main(["validate", str(changed)]) == 1
    assert "level 0: data differ from the checksum in the manifest" in capsys.readouterr().out


def _rewrite_manifest(path, **changes) -> None:
    group = zarr.open_group(str(path), mode="r+")
    status = dict(group.attrs[STATUS_KEY])
    status["manifest"] = {**status["manifest"], **changes}
    group.attrs[STATUS_KEY] = status


def test_manifests_with_the_earlier_sha256_chunk_digests_still_validate(source, tmp_path):
    from scalereg.omezarr.level_checksums import ALGORITHM, SHA256_CHUNKS

    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), **OPTIONS)
    group = zarr.open_group(str(out), mode="r")
    manifest = _manifest(out)
    assert manifest["checksum_algorithm"] == ALGORITHM
    legacy = [{**level, "checksum": compute_level_checksum(group[level["path"]], algorithm=SHA256_CHUNKS)} for level in manifest["levels"]]
    assert [l["checksum"] for l in legacy] != [l["checksum"] for l in manifest["levels"]]  # another digest per chunk
    _rewrite_manifest(out, checksum_algorithm=SHA256_CHUNKS, levels=legacy)
    assert validate_pyramid(str(out)) == []
    level1 = zarr.open_array(str(out / "1"), mode="r+")
    level1[3, 4, 5] = level1[3, 4, 5] + 1
    assert validate_pyramid(str(out)) == ["level 1: data differ from the checksum in the manifest (changed or corrupted since it was written)"]


def test_an_unknown_checksum_algorithm_is_reported_not_taken_for_corruption(source, tmp_path):
    out = tmp_path / "brain.ome.zarr"
    convert_volume(source, str(out), **OPTIONS)
    _rewrite_manifest(out, checksum_algorithm="md5 of something")
    assert validate_pyramid(str(out)) == ["the manifest's checksums use an algorithm this scalereg does not know ('md5 of something'): not checked"]


def test_block_markers_with_other_digests_leave_that_level_unchecksummed(source, tmp_path):
    """A run resumed over block markers whose digests another algorithm made (an older
    scalereg) cannot make the level's checksum from them: the manifest leaves it out
    rather than record a wrong one."""
    import json

    from scalereg.convert import plan_conversion, prepare_output, run_conversion
    from scalereg.convert.run_block import marker_uri, run_block

    out = tmp_path / "brain.ome.zarr"
    plan = plan_conversion(source, str(out), memory_budget="64MiB", **OPTIONS)
    kinds = [level.kind for level in plan.levels]
    assert kinds[:4] == ["copy+downsample", "fused", "fused", "downsample"]
    assert prepare_output(plan) == "new"
    block = plan.levels[0].blocks[0]
    run_block(plan, 0, block)  # the "first run" dies after this block
    marker = Path(marker_uri(str(out), 0, block))
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "algorithm": "an older one"}))
    assert run_conversion(plan_conversion(source, str(out), memory_budget="64MiB", **OPTIONS))["state"] == "resume"
    checksums = {level["path"]: level["checksum"] for level in _manifest(out)["levels"]}
    assert checksums["0"] is None and checksums["1"] is None and checksums["2"] is None  # levels 1, 2 are fused with level 0
    assert checksums["3"] == compute_level_checksum(zarr.open_group(str(out), mode="r")["3"])
    assert validate_pyramid(str(out)) == []
