"""Tiled warping: equivalence with ants.apply_transforms, seams, labels, inverse, points, bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage

from conftest import label_phantom, phantom
from scalereg.cli import main
from scalereg.convert import convert_volume
from scalereg.errors import InputError
from scalereg.geometry import Geometry
from scalereg.omezarr import read_pyramid, validate_pyramid
from scalereg.register.ants_image import ants, ants_image_geometry, from_ants_image, to_ants_image
from scalereg.synthetic import make_deformation
from scalereg.transforms import AffineTransform, GridMap, read_ants_affine, write_ants_affine
from scalereg.transforms.transform_points import transform_points
from scalereg.warp import plan_warp, warp_volume
from scalereg.warp.warped_source import SLAB_BYTES

SHAPE = (37, 45, 51)  # odd on purpose: tiles at the edges are partial
MOVING_GEOMETRY = Geometry(spacing=(20, 20, 20), unit="micrometer", orientation="asr")


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A moving phantom ('asr', 20 um) and labels on its grid; a reference grid with
    another orientation ('psl'), spacing and origin over the same space; a known
    affine + displacement field (on a coarser grid than the reference) as ANTs files."""
    tmp = tmp_path_factory.mktemp("warp")
    image = phantom(SHAPE, "float32")
    labels = label_phantom(SHAPE)
    tifffile.imwrite(tmp / "image.tif", image)
    tifffile.imwrite(tmp / "labels.tif", labels)
    convert_volume(str(tmp / "image.tif"), str(tmp / "moving.ome.zarr"), spacing=(20, 20, 20), orientation="asr", chunks=16)
    convert_volume(str(tmp / "labels.tif"), str(tmp / "labels.ome.zarr"), spacing=(20, 20, 20), orientation="asr", chunks=16, labels=True)
    centre = GridMap.of(MOVING_GEOMETRY, SHAPE).corners_lps().mean(axis=1)
    reference_geometry = Geometry(spacing=(22, 18, 20), orientation="psl")
    origin = reference_geometry.direction().T @ centre - (np.array(SHAPE) - 1) / 2 * np.array(reference_geometry.spacing) + 15
    reference_geometry = Geometry(spacing=(22, 18, 20), origin=tuple(origin), orientation="psl")
    convert_volume(str(tmp / "image.tif"), str(tmp / "reference.ome.zarr"), spacing=reference_geometry.spacing, origin=reference_geometry.origin, orientation="psl", chunks=16)
    reference = zarr.open_array(str(tmp / "reference.ome.zarr" / "0"))[:]
    coarse = ants.resample_image(to_ants_image(reference, reference_geometry), (50, 50, 50), use_voxels=False)
    truth = make_deformation(coarse, tmp / "truth", rotation_degrees=10, shift_um=40, warp_um=30, wavelength_um=600)
    return {
        "tmp": tmp,
        "moving": tmp / "moving.ome.zarr",
        "labels": tmp / "labels.ome.zarr",
        "reference": tmp / "reference.ome.zarr",
        "forward": truth.forward,
        "fixed_image": to_ants_image(reference, reference_geometry),
        "moving_image": to_ants_image(image, MOVING_GEOMETRY),
        "labels_image": to_ants_image(labels, MOVING_GEOMETRY),
        "labels_array": labels,
    }


def _warp(pair, out, budget, **options):
    return warp_volume(pair["forward"], str(options.pop("moving", pair["moving"])), str(pair["reference"]), str(out), memory_budget=budget, overwrite=True, **options)


# budgets: one 16^3 chunk per tile, a few chunks, the whole volume in one tile
BUDGETS = {"one-chunk": SLAB_BYTES + 300 * 1024, "few-chunks": SLAB_BYTES + 2**20, "one-tile": "1GiB"}


@pytest.mark.parametrize("interpolation,ants_name", [("linear", "linear"), ("bspline", "bSpline")])
def test_tiled_warp_equals_ants_apply_transforms(pair, tmp_path, interpolation, ants_name):
    expected = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["moving_image"], pair["forward"], interpolator=ants_name))
    outputs = {}
    for name, budget in BUDGETS.items():
        plan = plan_warp(pair["forward"], str(pair["moving"]), str(pair["reference"]), str(tmp_path / name), memory_budget=budget, interpolation=interpolation)
        tiles = plan.levels[0].blocks
        if name == "one-chunk":
            assert plan.levels[0].block_shape == (16, 16, 16) and len(tiles) == 3 * 3 * 4
        if name == "one-tile":
            assert len(tiles) == 1
        _warp(pair, tmp_path / name, budget, interpolation=interpolation, output_dtype="float32")
        outputs[name] = zarr.open_array(str(tmp_path / name / "0"))[:]
        interior = (slice(3, -3),) * 3
        assert _ncc(outputs[name][interior], expected[interior]) >= 0.999
        assert np.abs(outputs[name] - expected).max() <= 1e-4 * expected.max()
    # seams: tiles of one chunk give what one tile over the whole volume gives
    assert np.abs(outputs["one-chunk"] - outputs["one-tile"]).max() <= 1e-5 * expected.max()
    assert validate_pyramid(str(tmp_path / "one-chunk")) == []


def test_label_warp_matches_generic_label_and_keeps_label_values(pair, tmp_path):
    expected = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["labels_image"], pair["forward"], interpolator="genericLabel"))
    expected = np.rint(expected).astype(np.uint16)
    _warp(pair, tmp_path / "labels.ome.zarr", BUDGETS["one-chunk"], moving=pair["labels"], interpolation="label")
    got = zarr.open_array(str(tmp_path / "labels.ome.zarr" / "0"))[:]
    assert set(np.unique(got)) <= set(np.unique(pair["labels_array"]))
    boundary = ndimage.maximum_filter(expected, size=3) != ndimage.minimum_filter(expected, size=3)
    assert not np.any((got != expected) & ~boundary)  # identical except on label boundaries
    assert (got != expected).mean() < 0.001
    layout = read_pyramid(str(tmp_path / "labels.ome.zarr"))
    assert layout.labels  # its pyramid is built with the mode, not a Gaussian
    for level in layout.levels[1:]:
        assert set(np.unique(zarr.open_array(str(tmp_path / "labels.ome.zarr" / level.path))[:])) <= set(np.unique(pair["labels_array"]))


def test_nearest_and_output_dtype_clipping(pair, tmp_path):
    expected = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["moving_image"], pair["forward"], interpolator="bSpline"))
    _warp(pair, tmp_path / "u8.ome.zarr", "64MiB", interpolation="bspline", output_dtype="uint8")
    got = zarr.open_array(str(tmp_path / "u8.ome.zarr" / "0"))[:]
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.clip(np.rint(expected), 0, 255).astype(np.uint8))  # bspline undershoots below 0: clipped
    assert expected.min() < 0
    nearest = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["moving_image"], pair["forward"], interpolator="nearestNeighbor"))
    _warp(pair, tmp_path / "nn.ome.zarr", "64MiB", interpolation="nearest")
    got = zarr.open_array(str(tmp_path / "nn.ome.zarr" / "0"))[:]
    assert (got == nearest).mean() > 0.999  # ties at exactly half a voxel may round either way


def test_a_rerun_after_an_interruption_skips_finished_tiles_and_gives_identical_output(pair, tmp_path, monkeypatch):
    from scalereg.warp.warped_source import WarpedSource

    _warp(pair, tmp_path / "clean", BUDGETS["few-chunks"])
    original = WarpedSource.read_with_stats
    calls = {"n": 0}

    def crash_after_three(self, region):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("worker lost")
        return original(self, region)

    monkeypatch.setattr(WarpedSource, "read_with_stats", crash_after_three)
    with pytest.raises(OSError):
        warp_volume(pair["forward"], str(pair["moving"]), str(pair["reference"]), str(tmp_path / "resumed"), memory_budget=BUDGETS["few-chunks"])
    assert read_pyramid(str(tmp_path / "resumed")).attributes["status"]["status"] == "incomplete"
    monkeypatch.setattr(WarpedSource, "read_with_stats", original)
    result = warp_volume(pair["forward"], str(pair["moving"]), str(pair["reference"]), str(tmp_path / "resumed"), memory_budget=BUDGETS["few-chunks"])
    assert result["state"] == "resume" and result["levels"][0]["skipped"] == 3
    for level in ("0",):
        assert np.array_equal(zarr.open_array(str(tmp_path / "clean" / level))[:], zarr.open_array(str(tmp_path / "resumed" / level))[:])
    assert not (tmp_path / "resumed" / ".scalereg-scratch").exists()  # the converted fields are gone


def test_tiles_mapped_outside_the_moving_image_are_background_and_counted(pair, tmp_path):
    shift = tmp_path / "shift.mat"
    affine = read_ants_affine(pair["forward"][1])
    write_ants_affine(AffineTransform(affine.matrix, affine.translation + np.array([500.0, 0, 0])), shift)  # half the field of view
    result = warp_volume([pair["forward"][0], str(shift)], str(pair["moving"]), str(pair["reference"]), str(tmp_path / "out"), memory_budget=BUDGETS["one-chunk"])
    row = result["levels"][0]
    assert 0 < row["tiles_outside"] < row["blocks"]
    expected = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["moving_image"], [pair["forward"][0], str(shift)]))
    got = zarr.open_array(str(tmp_path / "out" / "0"))[:]
    assert np.abs(got - expected).max() <= 1e-4 * expected.max()
    assert (got == 0).sum() == (expected == 0).sum() > 0


def test_bad_warp_inputs_fail_with_one_clear_error(pair, tmp_path):
    moving, reference = str(pair["moving"]), str(pair["reference"])
    with pytest.raises(InputError, match="transform file not found"):
        plan_warp([str(tmp_path / "nope.mat")], moving, reference, str(tmp_path / "o1"))
    with pytest.raises(InputError, match="no manifest.json"):
        (tmp_path / "half-written").mkdir()
        plan_warp(str(tmp_path / "half-written"), moving, reference, str(tmp_path / "o2"))
    with pytest.raises(InputError, match="label image"):
        plan_warp(pair["forward"], str(pair["labels"]), reference, str(tmp_path / "o3"), interpolation="linear")
    with pytest.raises(InputError, match="output-dtype"):
        plan_warp(pair["forward"], moving, reference, str(tmp_path / "o4"), output_dtype="complex64")
    with pytest.raises(InputError, match="cannot be inverted"):
        plan_warp([f"[{pair['forward'][0]},1]"], moving, reference, str(tmp_path / "o5"))
    # the same image labelled in millimeters: it lies 1000x farther away, nothing overlaps
    tifffile.imwrite(tmp_path / "mm.tif", phantom(SHAPE, "float32"))
    convert_volume(str(tmp_path / "mm.tif"), str(tmp_path / "mm.ome.zarr"), spacing=(20, 20, 20), unit="millimeter", orientation="asr", chunks=16)
    with pytest.raises(InputError, match="micrometers and the moving image in millimeters.*check that both units"):
        plan_warp(pair["forward"], str(tmp_path / "mm.ome.zarr"), reference, str(tmp_path / "o6"))
    # NaNs in the moving image: named, with where; the output stays marked incomplete
    shutil.copytree(pair["moving"], tmp_path / "nan.ome.zarr")
    zarr.open_array(str(tmp_path / "nan.ome.zarr" / "0"), mode="r+")[20, 20, 20] = np.nan
    with pytest.raises(InputError, match="nan.ome.zarr/0: contains 1 NaN/Inf"):
        warp_volume(pair["forward"], str(tmp_path / "nan.ome.zarr"), reference, str(tmp_path / "o7"))
    assert read_pyramid(str(tmp_path / "o7")).attributes["status"]["status"] == "incomplete"


def test_ants_affine_files_read_and_write_like_ants(pair, tmp_path):
    affine = read_ants_affine(pair["forward"][1])
    points = np.random.default_rng(0).uniform(-500, 500, size=(50, 3))
    frame = pd.DataFrame(points, columns=["x", "y", "z"])
    expected = ants.apply_transforms_to_points(3, frame, [pair["forward"][1]]).values
    assert np.abs(affine.map(points.T).T - expected).max() < 1e-3
    write_ants_affine(affine.inverse(), tmp_path / "inverse.mat")
    back = ants.apply_transforms_to_points(3, pd.DataFrame(expected, columns=["x", "y", "z"]), [str(tmp_path / "inverse.mat")]).values
    assert np.abs(back - points).max() < 1e-3
    with pytest.raises(InputError, match="not an ITK/ANTs .mat"):
        (tmp_path / "bad.mat").write_text("not a transform")
        read_ants_affine(tmp_path / "bad.mat")


def test_points_agree_with_ants_and_are_flagged_outside_the_field(pair):
    field = ants.image_read(pair["forward"][0])
    grid = GridMap.of(ants_image_geometry(field), field.shape[::-1])
    corners = grid.corners_lps()
    rng = np.random.default_rng(1)
    inside = rng.uniform(corners.min(axis=1), corners.max(axis=1), size=(300, 3))
    outside = corners.max(axis=1) + rng.uniform(100, 300, size=(20, 3))
    points = np.vstack([inside, outside])
    expected = ants.apply_transforms_to_points(3, pd.DataFrame(points, columns=["x", "y", "z"]), pair["forward"]).values
    result = transform_points(points, pair["forward"], coordinates="lps")
    assert np.abs(result.points - expected).max() < 1e-2
    assert not result.outside_field[:300].any() and result.outside_field[300:].all()


# ---------------------------------------------------------------- with a real registration


def _mouse_labels(fixed) -> np.ndarray:
    """Three smooth tissue classes of the sample mouse (by intensity), as labels 0, 10, 20, 30."""
    volume = zarr.open_array(str(fixed / "0"))[:].astype(np.float32)
    smooth = ndimage.gaussian_filter(volume, 2)
    brain = smooth > smooth.mean()
    bands = np.quantile(smooth[brain], [1 / 3, 2 / 3])
    labels = np.zeros(volume.shape, np.uint16)
    labels[brain] = 10 + 10 * np.digitize(smooth[brain], bands)
    return labels


def test_transform_directory_warp_equals_ants_with_its_files(mouse_registration, tmp_path):
    case = mouse_registration
    out = tmp_path / "warped.ome.zarr"
    warp_volume(str(case["transform"]), str(case["moving"]), str(case["fixed"]), str(out), memory_budget="64MiB", output_dtype="float32")
    fixed_layout, moving_layout = read_pyramid(str(case["fixed"])), read_pyramid(str(case["moving"]))
    fixed = zarr.open_array(str(case["fixed"] / "0"))[:]
    moving = zarr.open_array(str(case["moving"] / "0"))[:]
    forward = [str(case["transform"] / p) for p in case["manifest"]["outputs"]["forward"]]
    expected = from_ants_image(ants.apply_transforms(to_ants_image(fixed, fixed_layout.geometry), to_ants_image(moving, moving_layout.geometry), forward))
    got = zarr.open_array(str(out / "0"))[:]
    assert np.abs(got - expected).max() <= 1e-3 * expected.max()  # the OME-Zarr fields are the NIfTI fields
    assert _ncc(got, fixed) > _ncc(moving, fixed) + 0.05  # and the warp really registers
    assert validate_pyramid(str(out)) == []


def test_labels_to_moving_space_and_back(mouse_registration, tmp_path):
    """Atlas-style labels on the fixed grid, warped with --inverse onto the moving grid
    and back with the forward transform, land where they started."""
    case = mouse_registration
    labels = _mouse_labels(case["fixed"])
    geometry = read_pyramid(str(case["fixed"])).geometry
    zarr.save_array(str(tmp_path / "labels.zarr"), labels)
    convert_volume(str(tmp_path / "labels.zarr"), str(tmp_path / "labels.ome.zarr"), spacing=geometry.spacing, origin=geometry.origin, orientation=geometry.orientation, labels=True, chunks=64)
    warp_volume(str(case["transform"]), str(tmp_path / "labels.ome.zarr"), str(case["moving"]), str(tmp_path / "in-moving.ome.zarr"), inverse=True, interpolation="label")
    warp_volume(str(case["transform"]), str(tmp_path / "in-moving.ome.zarr"), str(case["fixed"]), str(tmp_path / "back.ome.zarr"), interpolation="label")
    back = zarr.open_array(str(tmp_path / "back.ome.zarr" / "0"))[:]
    for label in (10, 20, 30):
        a, b = labels == label, back == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95, label


def test_transform_directory_of_another_pair_is_refused(mouse_registration, tmp_path, pair):
    case = mouse_registration
    with pytest.raises(InputError, match="another pair"):
        plan_warp(str(case["transform"]), str(pair["moving"]), str(case["fixed"]), str(tmp_path / "o"))
    with pytest.raises(InputError, match="another pair"):
        plan_warp(str(case["transform"]), str(case["moving"]), str(pair["reference"]), str(tmp_path / "o"))
    # the registered moving image itself, changed after the registration
    changed = tmp_path / "changed.ome.zarr"
    shutil.copytree(case["moving"], changed)
    manifest = json.loads((case["transform"] / "manifest.json").read_text())
    manifest["moving"]["uri"] = str(changed)
    copy = tmp_path / "transform"
    shutil.copytree(case["transform"], copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    level = next(iter(manifest["moving"]["fingerprints"]))
    array = zarr.open_array(str(changed / level), mode="r+")
    array[0, 0, 0] = array[0, 0, 0] + 1
    with pytest.raises(InputError, match="has changed since the registration"):
        plan_warp(str(copy), str(changed), str(case["fixed"]), str(tmp_path / "o"))


def test_cli_transform_points_moves_cells_from_moving_to_fixed(mouse_registration, tmp_path, capsys, monkeypatch):
    """Voxel coordinates of cells in the moving image, mapped to the fixed image, agree
    with ANTs' point mapping through the inverse transforms and land on the same tissue."""
    case = mouse_registration
    moving = zarr.open_array(str(case["moving"] / "0"))[:]
    cells = np.argwhere(moving > np.quantile(moving, 0.9))[::400].astype(float)
    table = pd.DataFrame({"id": np.arange(len(cells)), "Z": cells[:, 0], "y": cells[:, 1], "x": cells[:, 2]})
    table.loc[len(table)] = [999, -400.0, 10.0, 10.0]  # far outside everything
    table.to_csv(tmp_path / "cells.csv", index=False)
    code = main(["transform-points", "--transform", str(case["transform"]), "--points", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "mapped.csv")])
    assert code == 0
    printed = capsys.readouterr().out
    mapped = pd.read_csv(tmp_path / "mapped.csv")
    assert list(mapped.columns) == ["id", "Z", "y", "x", "outside_field", "outside_image"]
    # ANTs, in LPS: moving points -> fixed through the inverse list
    moving_grid = GridMap.of(read_pyramid(str(case["moving"])).geometry, moving.shape)
    fixed_grid = GridMap.of(read_pyramid(str(case["fixed"])).geometry, moving.shape)
    outputs = case["manifest"]["outputs"]
    inverse = [str(case["transform"] / p) for p in outputs["inverse"]]
    lps = ants.apply_transforms_to_points(3, pd.DataFrame(moving_grid.to_lps(cells.T).T, columns=["x", "y", "z"]), inverse, whichtoinvert=outputs["inverse_invert"]).values
    expected = fixed_grid.to_index(lps.T).T
    got = mapped[["Z", "y", "x"]].to_numpy()[: len(cells)]
    assert np.abs(got - expected).max() < 1e-3
    outside = ~fixed_grid.inside(expected.T)
    assert mapped["outside_image"].tolist() == [*outside, True]  # the far point, and any cell past the fixed image's edge
    assert f"{outside.sum() + 1} outside the target image" in printed
    got, expected = got[~outside], expected[~outside]
    fixed = zarr.open_array(str(case["fixed"] / "0"))[:]
    index = np.rint(got).astype(int)
    assert np.median(fixed[tuple(index.T)]) > np.quantile(fixed, 0.75)  # bright cells land on bright tissue
    # bad CSVs: one line, exit 2
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["transform-points", "--transform", str(case["transform"]), "--points", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "needs columns z,y,x" in capsys.readouterr().err
    # an output that cannot be written, or lies outside the output roots: one line naming --out, nothing left
    points = ["transform-points", "--transform", str(case["transform"]), "--points", str(tmp_path / "cells.csv")]
    assert main([*points, "--out", str(tmp_path / "no-such-dir" / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scalereg: error: --out: ") and "no-such-dir" in err, err
    (tmp_path / "a-directory.csv").mkdir()
    assert main([*points, "--out", str(tmp_path / "a-directory.csv")]) == 2
    assert "--out: " in capsys.readouterr().err and list((tmp_path / "a-directory.csv").iterdir()) == []
    assert not list(tmp_path.glob(".scalereg-*.partial"))
    monkeypatch.setenv("SCALEREG_OUTPUT_ROOTS", str(tmp_path / "results"))
    assert main([*points, "--out", str(tmp_path / "elsewhere.csv")]) == 2
    assert "outside the output roots" in capsys.readouterr().err and not (tmp_path / "elsewhere.csv").exists()
    (tmp_path / "results").mkdir()
    assert main([*points, "--out", str(tmp_path / "results" / "mapped.csv")]) == 0
    assert pd.read_csv(tmp_path / "results" / "mapped.csv").equals(mapped)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "results" / "mapped.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file


def test_cli_warp_runs_the_flow_and_reports_bad_input_in_one_line(pair, tmp_path, capsys, prefect_server):
    args = ["warp", "--moving", str(pair["moving"]), "--reference", str(pair["reference"]), "--out", str(tmp_path / "w.ome.zarr")]
    for t in pair["forward"]:
        args += ["--transform", t]
    assert main([*args, "--dry-run"]) == 0
    assert not (tmp_path / "w.ome.zarr").exists()
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    expected = from_ants_image(ants.apply_transforms(pair["fixed_image"], pair["moving_image"], pair["forward"]))
    got = zarr.open_array(str(tmp_path / "w.ome.zarr" / "0"))[:]
    assert np.abs(got - expected).max() <= 1e-4 * expected.max()
    assert validate_pyramid(str(tmp_path / "w.ome.zarr")) == []
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "w2.ome.zarr"), "--interpolation", "label"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label interpolation needs an integer image" in err and "Traceback" not in err
