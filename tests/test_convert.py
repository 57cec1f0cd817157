"""Conversion to OME-Zarr through the core (no Prefect): every source format, both NGFF
versions, the three validators, labels, sharding, resume and bad input."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import zarr

from conftest import label_phantom, phantom
from scalereg.convert import convert_volume, plan_conversion, prepare_output, run_block, run_conversion
from scalereg.errors import InputError, MemoryBudgetError
from scalereg.units import parse_bytes
from scalereg.omezarr import read_pyramid, validate_pyramid
from scalereg.omezarr.create_pyramid_store import STATUS_KEY

SHAPE = (40, 52, 36)  # z, y, x


def lps_of(layout, index):
    """LPS position of a level-0 voxel according to the OME-Zarr metadata."""
    geometry = layout.geometry
    return geometry.direction() @ geometry.index_to_physical(index)


def corners():
    return [(0, 0, 0), (SHAPE[0] - 1, 0, 0), (0, SHAPE[1] - 1, 0), (0, 0, SHAPE[2] - 1), (7, 11, 13)]


def open_level(path, level="0"):
    return zarr.open_array(os.path.join(path, level), mode="r")


# ---------------------------------------------------------------- formats


def test_nifti_round_trip_keeps_physical_space(tmp_path):
    volume = phantom(SHAPE, "int16")
    # NIfTI stores (i, j, k) = (x, y, z); an affine with permuted, flipped axes and a shift
    affine = np.array([[0, 0, -0.025, 4.0], [0.05, 0, 0, -3.0], [0, -0.1, 0, 2.5], [0, 0, 0, 1.0]])
    image = nib.Nifti1Image(volume.transpose(2, 1, 0), affine)
    image.header.set_xyzt_units("mm")
    source = tmp_path / "brain.nii.gz"
    nib.save(image, source)
    out = tmp_path / "brain.ome.zarr"
    convert_volume(str(source), str(out), chunks=16)
    layout = read_pyramid(str(out))
    assert layout.geometry.unit == "millimeter"
    assert layout.levels[0].scale == pytest.approx((0.025, 0.1, 0.05))  # column norms of k, j, i
    for z, y, x in corners():
        ras = affine @ [x, y, z, 1]
        assert lps_of(layout, (z, y, x)) == pytest.approx([-ras[0], -ras[1], ras[2]])
    assert np.array_equal(open_level(out)[:], volume)


def test_tiff_stack_needs_and_takes_spacing(tmp_path):
    volume = phantom(SHAPE, "uint16")
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, volume)
    with pytest.raises(InputError, match="stores no voxel spacing"):
        plan_conversion(str(source), str(tmp_path / "x.ome.zarr"))
    out = tmp_path / "stack.ome.zarr"
    convert_volume(str(source), str(out), spacing=(4, 1.8, 1.8), unit="um", orientation="asr", chunks=16)
    layout = read_pyramid(str(out))
    assert layout.geometry.spacing == (4.0, 1.8, 1.8)
    assert layout.geometry.orientation == "asr"
    assert layout.geometry.unit == "micrometer"
    assert np.array_equal(open_level(out)[:], volume)


def test_tiff_slice_directory(tmp_path):
    volume = phantom(SHAPE, "uint8")
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(SHAPE[0]):
        tifffile.imwrite(folder / f"z_{z}.tif", volume[z])  # natural order: z_2 before z_10
    out = tmp_path / "slices.ome.zarr"
    convert_volume(str(folder), str(out), spacing=(2, 1, 1), chunks=16)
    assert np.array_equal(open_level(out)[:], volume)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_keep_lps_geometry(tmp_path, suffix):
    volume = phantom(SHAPE, "float32")
    image = sitk.GetImageFromArray(volume)  # sitk index (x, y, z) = our (z, y, x) reversed
    image.SetSpacing((0.5, 0.25, 2.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    # direction columns are for ITK axes x, y, z: x runs toward superior, y toward
    # right, z toward anterior
    image.SetDirection((0, -1, 0, 0, 0, -1, 1, 0, 0))
    source = tmp_path / f"brain{suffix}"
    sitk.WriteImage(image, str(source), useCompression=True)
    out = tmp_path / "itk.ome.zarr"
    convert_volume(str(source), str(out), chunks=16)
    layout = read_pyramid(str(out))
    for z, y, x in corners():
        expected = image.TransformIndexToPhysicalPoint((x, y, z))
        assert lps_of(layout, (z, y, x)) == pytest.approx(expected)
    assert np.array_equal(open_level(out)[:], volume)


def test_plain_zarr_array(tmp_path):
    volume = phantom(SHAPE, "uint16")
    source = tmp_path / "plain.zarr"
    zarr.create_array(str(source), shape=volume.shape, chunks=(8, 8, 8), dtype=volume.dtype)[:] = volume
    out = tmp_path / "plain.ome.zarr"
    convert_volume(str(source), str(out), spacing=(1, 1, 1), orientation="ras", chunks=16, ngff_version="0.4")
    assert np.array_equal(open_level(out)[:], volume)


@pytest.mark.parametrize("first,second", [("0.4", "0.5"), ("0.5", "0.4")])
def test_ome_zarr_to_ome_zarr_keeps_metadata(tmp_path, first, second):
    volume = phantom(SHAPE, "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), volume)
    a, b = tmp_path / "a.ome.zarr", tmp_path / "b.ome.zarr"
    convert_volume(str(raw), str(a), spacing=(3, 2, 1), origin=(100, -50, 7), orientation="lpi", chunks=16, ngff_version=first)
    convert_volume(str(a), str(b), chunks=16, ngff_version=second)
    la, lb = read_pyramid(str(a)), read_pyramid(str(b))
    assert (la.ngff_version, lb.ngff_version) == (first, second)
    assert la.geometry == lb.geometry
    assert [l.translation for l in la.levels] == [l.translation for l in lb.levels]
    assert np.array_equal(open_level(b)[:], volume)


# ---------------------------------------------------------------- OME-Zarr output


@pytest.fixture(params=["0.4", "0.5"])
def converted(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ngff{request.param}")
    volume = phantom((70, 66, 64), "uint16")
    raw = tmp / "raw.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp / "brain.ome.zarr"
    convert_volume(str(raw), str(out), spacing=(2, 1, 1), orientation="asr", chunks=16, ngff_version=request.param, min_size=8)
    return out, volume, request.param


def test_output_validates_with_ome_zarr_models(converted):
    import ome_zarr_models

    out, _, version = converted
    model = ome_zarr_models.open_ome_zarr(zarr.open_group(str(out), mode="r"))
    assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
    assert validate_pyramid(str(out)) == []


def test_output_opens_with_ome_zarr_py(converted):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out, volume, _ = converted
    node = list(Reader(parse_url(str(out)))())[0]
    layout = read_pyramid(str(out))
    assert [tuple(d.shape) for d in node.data] == [l.shape for l in layout.levels]
    assert np.array_equal(np.asarray(node.data[0]), volume)
    transforms = node.metadata["coordinateTransformations"]
    assert [t[1]["translation"] for t in transforms] == [list(l.translation) for l in layout.levels]


def test_output_opens_with_ngff_zarr(converted):
    import ngff_zarr

    out, volume, _ = converted
    multiscales = ngff_zarr.from_ngff_zarr(str(out), validate=True)
    layout = read_pyramid(str(out))
    assert len(multiscales.images) == len(layout.levels)
    for image, level in zip(multiscales.images, layout.levels):
        assert tuple(image.scale[a] for a in "zyx") == pytest.approx(level.scale)
        assert tuple(image.translation[a] for a in "zyx") == pytest.approx(level.translation)
    assert np.array_equal(np.asarray(multiscales.images[0].data), volume)
    orientation = multiscales.images[0].axes_orientations
    assert orientation["z"].value == "anterior-to-posterior"


def test_levels_are_anisotropy_aware_and_dtype_preserving(converted):
    out, _, _ = converted
    layout = read_pyramid(str(out))
    assert [l.scale for l in layout.levels][:3] == [(2, 1, 1), (2, 2, 2), (4, 4, 4)]
    for level in layout.levels:
        assert open_level(out, level.path).dtype == np.uint16


def test_sharded_output(tmp_path):
    volume = phantom((64, 64, 64), "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp_path / "sharded.ome.zarr"
    convert_volume(str(raw), str(out), spacing=(1, 1, 1), chunks=16, shards=32, memory_budget="3MiB", min_size=8)
    array = open_level(out)
    assert array.shards == (32, 32, 32) and array.chunks == (16, 16, 16)
    assert np.array_equal(array[:], volume)
    assert validate_pyramid(str(out)) == []
    with pytest.raises(InputError, match="sharding needs NGFF 0.5"):
        plan_conversion(str(raw), str(tmp_path / "x.ome.zarr"), spacing=(1, 1, 1), shards=32, ngff_version="0.4")


def test_label_pyramid_keeps_labels(tmp_path):
    labels = label_phantom((64, 60, 56))
    raw = tmp_path / "labels.zarr"
    zarr.save_array(str(raw), labels)
    out = tmp_path / "labels.ome.zarr"
    convert_volume(str(raw), str(out), spacing=(1, 1, 1), chunks=16, labels=True, min_size=8)
    layout = read_pyramid(str(out))
    assert layout.labels
    original = set(np.unique(labels))
    for level in layout.levels:
        values = set(np.unique(open_level(out, level.path)[:]))
        assert values <= original, f"level {level.path} invented labels {values - original}"
    with pytest.raises(InputError, match="integer type"):
        plan_conversion(_float_zarr(tmp_path), str(tmp_path / "y.ome.zarr"), spacing=(1, 1, 1), labels=True)


def _float_zarr(tmp_path: Path) -> str:
    path = tmp_path / "float.zarr"
    zarr.save_array(str(path), np.zeros((8, 8, 8), dtype=np.float32))
    return str(path)


# ---------------------------------------------------------------- memory, resume, bad input


def test_block_sizes_follow_the_memory_budget(tmp_path):
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((96, 96, 96), "uint16"))
    small = plan_conversion(str(raw), str(tmp_path / "a.ome.zarr"), spacing=(1, 1, 1), chunks=16, memory_budget="1MiB")
    large = plan_conversion(str(raw), str(tmp_path / "a.ome.zarr"), spacing=(1, 1, 1), chunks=16, memory_budget="64MiB")
    assert len(small.levels[0].blocks) > len(large.levels[0].blocks)
    assert all(level.bytes_per_task <= 2**20 for level in small.levels)
    with pytest.raises(MemoryBudgetError, match="too small"):
        plan_conversion(str(raw), str(tmp_path / "a.ome.zarr"), spacing=(1, 1, 1), chunks=64, memory_budget="100KiB")


def _chunk_digests(root: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "zarr.json" not in path.name and not path.name.startswith(".z"):
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_interrupted_conversion_resumes_and_matches_an_uninterrupted_one(tmp_path):
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((64, 64, 64), "uint16"))
    options = dict(spacing=(1, 1, 1), chunks=16, memory_budget="512KiB", min_size=8)
    reference = tmp_path / "reference.ome.zarr"
    convert_volume(str(raw), str(reference), **options)

    out = tmp_path / "resumed.ome.zarr"
    plan = plan_conversion(str(raw), str(out), **options)
    from scalereg.convert import prepare_output

    assert prepare_output(plan) == "new"
    done = plan.levels[0].blocks[: len(plan.levels[0].blocks) // 2]
    for block in done:
        run_block(plan, 0, block)  # the "first run" dies after these blocks
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs[STATUS_KEY]["status"] == "incomplete"
    assert validate_pyramid(str(out))  # an interrupted output is never reported valid

    summary = run_conversion(plan_conversion(str(raw), str(out), **options))
    assert summary["state"] == "resume"
    assert summary["levels"][0]["skipped"] == len(done)
    assert zarr.open_group(str(out), mode="r").attrs[STATUS_KEY]["status"] == "complete"
    assert _chunk_digests(out) == _chunk_digests(reference)
    assert not (out / ".scalereg-progress").exists()
    # the resumed run knows the skipped blocks' chunk digests (from their markers)
    manifests = [zarr.open_group(str(o), mode="r").attrs[STATUS_KEY]["manifest"] for o in (out, reference)]
    assert [level["checksum"] for level in manifests[0]["levels"]] == [level["checksum"] for level in manifests[1]["levels"]]
    assert all(level["checksum"] for level in manifests[0]["levels"])

    again = run_conversion(plan_conversion(str(raw), str(out), **options))
    assert again["state"] == "complete" and again["levels"] == []


def test_existing_output_is_refused_without_overwrite(tmp_path):
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((16, 16, 16), "uint16"))
    out = tmp_path / "out.ome.zarr"
    out.mkdir()
    (out / "something").write_text("precious")
    with pytest.raises(InputError, match="already exists"):
        convert_volume(str(raw), str(out), spacing=(1, 1, 1))
    # --overwrite replaces only what scalereg wrote: never a folder of someone else's files
    with pytest.raises(InputError, match="did not write \\(something\\)"):
        convert_volume(str(raw), str(out), spacing=(1, 1, 1), overwrite=True)
    assert (out / "something").read_text() == "precious"
    (out / "something").unlink()
    convert_volume(str(raw), str(out), spacing=(1, 1, 1))  # an empty directory is nothing in the way
    other = tmp_path / "other.zarr"
    zarr.save_array(str(other), phantom((16, 16, 16), "uint16", seed=3))
    with pytest.raises(InputError, match="written for other inputs.*--overwrite"):
        convert_volume(str(other), str(out), spacing=(1, 1, 1))
    convert_volume(str(other), str(out), spacing=(1, 1, 1), overwrite=True)  # a pyramid scalereg wrote is replaced
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], zarr.open_array(str(other))[:])


def test_nan_voxels_stop_the_conversion_and_leave_it_incomplete(tmp_path):
    volume = phantom((32, 32, 32), "float32")
    volume[20, 5, 9] = np.nan
    raw = tmp_path / "nan.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp_path / "nan.ome.zarr"
    with pytest.raises(InputError, match=r"NaN/Inf voxels.*\(20, 5, 9\)"):
        convert_volume(str(raw), str(out), spacing=(1, 1, 1), chunks=16, memory_budget="200KiB")
    assert zarr.open_group(str(out), mode="r").attrs[STATUS_KEY]["status"] == "incomplete"


def test_output_inside_input_is_refused(tmp_path):
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((16, 16, 16), "uint16"))
    with pytest.raises(InputError, match="inside the input"):
        plan_conversion(str(raw), str(raw / "out.ome.zarr"), spacing=(1, 1, 1))


def _level_from_the_one_below(out: Path, plan, index: int = 1) -> np.ndarray:
    """Level ``index`` as `downsample_block` computes it from the level below on disk,
    in one block (no streaming, no halo seams)."""
    from scalereg.pyramid.downsample_block import downsample_block

    level = plan.layout.levels[index]
    target = zarr.create_array(zarr.storage.MemoryStore(), shape=level.shape, chunks=level.chunks, dtype=plan.layout.dtype)
    downsample_block(open_level(out, plan.layout.levels[index - 1].path), target, tuple((0, n) for n in level.shape), level.factors, plan.method)
    return target[:]


def test_every_level_equals_the_level_below_downsampled_in_one_block(tmp_path):
    """Levels 1 and 2 are written by level 0's tasks from one read of the source when a
    step of blocks wide enough for level 2's chunks fits the budget, level 1 alone when
    only a narrower one does; the coarser levels from the level below in blocks
    streamed along z.  Each must hold exactly what downsampling the level below in
    one block gives."""
    raw = tmp_path / "raw.zarr"
    volume = phantom((130, 66, 61), "uint16")
    zarr.create_array(str(raw), shape=volume.shape, chunks=(16, 16, 16), dtype=volume.dtype)[:] = volume
    options = dict(spacing=(1, 1, 1), chunks=8, min_size=4)
    for budget, fused in (("64MiB", 2), ("400KiB", 2), ("300KiB", 1), ("150KiB", 1)):
        out = tmp_path / f"f-{budget}.ome.zarr"
        plan = plan_conversion(str(raw), str(out), memory_budget=budget, **options)
        assert [l.kind for l in plan.levels[: 2 + fused]] == ["copy+downsample", *["fused"] * fused, "downsample"], budget
        assert len(plan.levels[0].blocks) >= 3 and len(plan.levels[1 + fused].blocks) >= 2
        run_conversion(plan)
        assert np.array_equal(open_level(out, "0")[:], volume)
        for index in range(1, len(plan.layout.levels)):
            assert np.array_equal(open_level(out, str(index))[:], _level_from_the_one_below(out, plan, index)), (budget, index)


@pytest.mark.parametrize("fused", [1, 2])
@pytest.mark.parametrize("method", ["gaussian", "mode"])
@pytest.mark.parametrize("spacing", [(1, 1, 1), (1, 2, 2), (2, 1, 1)])
def test_streamed_blocks_of_any_length_equal_the_levels_from_level_zero(tmp_path, method, spacing, fused):
    """Fused level-0 blocks stream along z in steps of one chunk layer, carrying the
    planes the next plane of each level needs over from step to step (level 1's planes
    computed beyond the block for level 2's filter): blocks that start and end
    mid-volume, span several steps or end at an edge that is no multiple of the
    factors give the voxels of levels 1 (and 2) computed from the level below on disk."""
    raw = tmp_path / "raw.zarr"
    labels = method == "mode"
    volume = phantom((77, 45, 38), "uint16")
    zarr.save_array(str(raw), volume // 500 if labels else volume)
    options = dict(spacing=spacing, chunks=8, min_size=4, labels=labels)
    out = tmp_path / "f.ome.zarr"
    plan = plan_conversion(str(raw), str(out), memory_budget="64MiB", **options)
    assert [l.kind for l in plan.levels[:3]] == ["copy+downsample", "fused", "fused"]
    if fused == 1:  # level 2 from level 1 on disk, as a smaller budget plans it
        plan = replace(plan, levels=(*plan.levels[:2], replace(plan.levels[2], kind="downsample"), *plan.levels[3:]))
    prepare_output(plan)
    # blocks of 1, 3 and the rest of the write units along z; 1 and the rest across
    # (a unit: whole chunks of every level written, times the factors down to it)
    uz, uy, ux = (math.lcm(8, *(math.prod(plan.layout.levels[k].factors[axis] for k in range(1, j + 1)) * 8 for j in range(1, fused + 1))) for axis in range(3))
    zs = [(0, uz), (uz, 3 * uz), (3 * uz, 77)] if 3 * uz < 77 else [(0, uz), (uz, 77)]
    ys, xs = [(0, uy), (uy, 45)], [(0, ux), (ux, 38)]
    for block in itertools.product(zs, ys, xs):
        result = run_block(plan, 0, block)
        assert result["voxels_written"] == math.prod(b - a for a, b in block)
        assert len(result["digests"]) == 1 + fused
    assert np.array_equal(open_level(out, "0")[:], zarr.open_array(str(raw), mode="r")[:])
    for index in range(1, fused + 1):
        assert np.array_equal(open_level(out, str(index))[:], _level_from_the_one_below(out, plan, index)), index


@pytest.mark.parametrize("budget, fused", [("8MiB", 1), ("16MiB", 2)])
def test_a_fused_plan_streams_long_blocks_in_a_bounded_cross_section(tmp_path, budget, fused):
    """The budget sets one step's cross-section; blocks run long along z.  Blocks that
    write level 2 too are whole multiples of its chunks times the factors across."""
    raw = tmp_path / "raw.zarr"
    zarr.create_array(str(raw), shape=(600, 300, 200), chunks=(64, 64, 64), dtype="uint16")
    plan = plan_conversion(str(raw), str(tmp_path / "o.ome.zarr"), spacing=(1, 1, 1), chunks=32, memory_budget=budget)
    level = plan.levels[0]
    assert [l.kind for l in plan.levels[: 2 + fused]] == ["copy+downsample", *["fused"] * fused, "downsample"][: len(plan.levels[: 2 + fused])]
    z, y, x = level.block_shape
    unit = 32 * 2**fused  # level `fused`'s chunks times the factors down to it
    assert y % unit == 0 and x % unit == 0 and y < 300 and z > 4 * 32  # then y; long along z
    if fused == 1:
        assert x == 256  # x first, a whole row
    assert level.bytes_per_task <= parse_bytes(budget)
    assert level.bytes_per_task >= 32 * y * x * 2 * 4  # a step: 32 planes, its copies and buffers


def test_blocks_hold_the_plans_chunks_in_flight_and_leave_zarr_as_it_was(tmp_path, monkeypatch):
    """Local conversions have zarr decode and encode at most LOCAL_CHUNKS_IN_FLIGHT
    chunks at once (fewer buffers, same speed); object stores keep zarr's setting
    (requests in flight hide latency); zarr's setting is back after the blocks."""
    import scalereg.pyramid.stream_block as stream_block
    from scalereg.convert.plan_conversion import LOCAL_CHUNKS_IN_FLIGHT, chunks_in_flight

    configured = zarr.config.get("async.concurrency")
    assert configured > LOCAL_CHUNKS_IN_FLIGHT  # zarr's default: 10
    assert chunks_in_flight("s3://bucket/brain.zarr", str(tmp_path / "o.ome.zarr")) == configured
    assert chunks_in_flight(str(tmp_path / "brain.zarr"), "s3://bucket/o.ome.zarr") == configured
    with zarr.config.set({"async.concurrency": 2}):
        assert chunks_in_flight(str(tmp_path / "brain.zarr"), str(tmp_path / "o.ome.zarr")) == 2  # never more than zarr's
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((40, 36, 30), "uint16"))
    seen = []
    write_and_hash = stream_block.write_and_hash

    def recording(*args, **kwargs):
        seen.append(zarr.config.get("async.concurrency"))
        return write_and_hash(*args, **kwargs)

    monkeypatch.setattr(stream_block, "write_and_hash", recording)
    plan = plan_conversion(str(raw), str(tmp_path / "o.ome.zarr"), spacing=(1, 1, 1), chunks=8, min_size=4)
    assert plan.chunks_in_flight == LOCAL_CHUNKS_IN_FLIGHT
    run_conversion(plan)
    assert seen and set(seen) == {LOCAL_CHUNKS_IN_FLIGHT}
    assert zarr.config.get("async.concurrency") == configured
