"""Coarse-to-fine registration: schedules, the planner, ANTs geometry, and accuracy on
real anatomy (a human MNI152 brain with its tissue maps, a mouse brain)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
import zarr

from scalereg.convert import convert_volume
from scalereg.errors import InputError, MemoryBudgetError
from scalereg.geometry import Geometry
from scalereg.omezarr import pyramid_layout, read_pyramid
from scalereg.orientation import reorientation
from scalereg.register import default_schedule, load_schedule, plan_registration, register_pyramids
from scalereg.register.ants_image import ants, from_ants_image, to_ants_image
from scalereg.register.register_pyramids import _check_overlap
from scalereg.synthetic import deform, make_deformation, residual_um

# ----------------------------------------------------------------- schedules


def test_default_schedules_go_coarse_to_fine():
    for kind in ("mouse", "human"):
        schedule = default_schedule(kind)
        spacings = [s.spacing for s in schedule.steps]
        assert spacings == sorted(spacings, reverse=True)
        assert [s.transform for s in schedule.steps][:2] == ["rigid", "affine"]
        assert schedule.steps[-1].transform == "syn"


def test_schedule_from_yaml_and_bad_schedules(tmp_path):
    path = tmp_path / "schedule.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "steps": [
                    {"spacing": 400, "transform": "affine", "iterations": [100], "shrink_factors": [1], "smoothing_sigmas": [0]},
                    {"spacing": 200, "transform": "syn", "metric": "cc", "iterations": [10], "shrink_factors": [1], "smoothing_sigmas": [0]},
                ],
            }
        )
    )
    schedule = load_schedule(path)
    assert schedule.name == "mine" and schedule.steps[1].metric == "cc"
    bad = {"steps": [{"spacing": 100, "transform": "bspline", "iterations": [1], "shrink_factors": [1], "smoothing_sigmas": [0]}]}
    with pytest.raises(InputError, match="transform"):
        load_schedule(bad)
    fine_first = {
        "steps": [
            {"spacing": 50, "transform": "rigid", "iterations": [1], "shrink_factors": [1], "smoothing_sigmas": [0]},
            {"spacing": 100, "transform": "affine", "iterations": [1], "shrink_factors": [1], "smoothing_sigmas": [0]},
        ]
    }
    with pytest.raises(InputError, match="coarse to fine"):
        load_schedule(fine_first)
    mismatched = {"steps": [{"spacing": 50, "transform": "rigid", "iterations": [1, 2], "shrink_factors": [1], "smoothing_sigmas": [0]}]}
    with pytest.raises(InputError, match="same length"):
        load_schedule(mismatched)
    with pytest.raises(InputError, match="no such schedule"):
        load_schedule(tmp_path / "missing.yaml")


# ----------------------------------------------------------------- planner


def _layout(shape, spacing, orientation="asr"):
    from scalereg.pyramid.level_schedule import level_schedule

    geometry = Geometry(spacing=spacing, orientation=orientation)
    return pyramid_layout(shape, "uint16", geometry, level_schedule(shape, spacing, min_size=16))


def test_planner_picks_levels_by_spacing_and_says_when_none_is_near():
    fixed = _layout((256, 320, 448), (25, 25, 25))  # 25, 50, 100, 200, 400 um
    moving = _layout((128, 160, 224), (50, 50, 50))  # 50 .. 400 um
    plan = plan_registration(fixed, moving, default_schedule("mouse"), 64 * 2**30)
    chosen = [(p.step.spacing, p.fixed_spacing_um, p.moving_spacing_um) for p in plan.steps]
    assert chosen[0] == (200, 200, 200)
    assert chosen[-1] == (25, 25, 50)
    assert any("no level near 25 um" in note and "moving" in note for note in plan.notes)


def test_planner_stops_at_the_memory_budget_and_says_why():
    fixed = _layout((256, 320, 448), (25, 25, 25))
    plan = plan_registration(fixed, fixed, default_schedule("mouse"), 4 * 2**30)
    assert plan.steps[-1].fixed_spacing_um == 50
    assert plan.stopped and "syn-25um" in plan.stopped and "budget" in plan.stopped
    assert all(step.estimated_bytes <= 4 * 2**30 for step in plan.steps)
    with pytest.raises(MemoryBudgetError, match="too small even for the coarsest step"):
        plan_registration(fixed, fixed, default_schedule("mouse"), 2**20)


def test_planner_skips_steps_without_a_finer_level():
    fixed = _layout((170, 217, 255), (50, 50, 50))  # 50, 100, 200 um
    plan = plan_registration(fixed, fixed, default_schedule("mouse"), 64 * 2**30)
    assert [p.step.label for p in plan.steps][-1] == "syn-50um"
    assert plan.skipped and plan.skipped[0]["label"] == "syn-25um"


def test_planner_needs_orientation():
    with pytest.raises(InputError, match="orientation"):
        plan_registration(_layout((64, 64, 64), (10, 10, 10), None), _layout((64, 64, 64), (10, 10, 10)), default_schedule(), 2**34)


# ----------------------------------------------------------------- geometry into ANTs


@pytest.mark.parametrize("code", ["asr", "psl", "ras", "ial"])
def test_ants_images_put_voxels_where_the_metadata_says(code):
    geometry = Geometry(spacing=(0.02, 0.03, 0.05), origin=(1.0, -2.0, 3.0), unit="millimeter", orientation=code)
    image = to_ants_image(np.zeros((5, 6, 7), np.float32), geometry)
    for index in [(0, 0, 0), (4, 0, 0), (0, 5, 0), (1, 2, 6)]:
        expected_um = geometry.direction() @ geometry.index_to_physical(index) * 1000
        got = ants.transform_index_to_physical_point(image, [int(i) for i in reversed(index)])
        assert np.allclose(got, expected_um)
    round_trip = from_ants_image(to_ants_image(np.arange(210, dtype=np.float32).reshape(5, 6, 7), geometry))
    assert np.array_equal(round_trip, np.arange(210).reshape(5, 6, 7))


def test_overlap_check_refuses_disjoint_images():
    fixed = np.zeros((20, 20, 20))
    fixed[:8] = 1
    moving = np.zeros((20, 20, 20))
    moving[12:] = 1
    with pytest.raises(InputError, match="do not overlap"):
        _check_overlap(fixed, moving, {"fixed": "f.ome.zarr", "moving": "m.ome.zarr"})
    _check_overlap(fixed, fixed, {"fixed": "f", "moving": "m"})


# ----------------------------------------------------------------- accuracy on real anatomy


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    a, b = a == label, b == label
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


HUMAN_TEST_SCHEDULE = {
    "name": "test-human",
    "steps": [
        {"spacing": 4000, "transform": "rigid", "iterations": [300, 200], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 4000, "transform": "affine", "iterations": [300, 200], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 4000, "transform": "syn", "metric": "mattes", "iterations": [40, 20], "shrink_factors": [2, 1],
         "smoothing_sigmas": [1, 0], "gradient_step": 0.25},
        {"spacing": 2000, "transform": "syn", "metric": "mattes", "iterations": [15], "shrink_factors": [1],
         "smoothing_sigmas": [0], "gradient_step": 0.25},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def human_case(sample_volumes, tmp_path_factory):
    """MNI152 (1 mm) and its grey/white matter labels, plus a copy moved by a known
    affine and smooth warp, all as OME-Zarr pyramids (1, 2, 4 mm)."""
    tmp = tmp_path_factory.mktemp("human")
    mni = sample_volumes["mni152"]
    fixed = tmp / "fixed.ome.zarr"
    convert_volume(str(mni.path), str(fixed), chunks=64)
    layout = read_pyramid(str(fixed))
    geometry = layout.geometry
    t1 = zarr.open_array(str(fixed / "0"))[:]
    gm = np.asarray(nib.load(mni.extra["gm"]).dataobj).transpose(2, 1, 0)
    wm = np.asarray(nib.load(mni.extra["wm"]).dataobj).transpose(2, 1, 0)
    labels = np.zeros(t1.shape, np.uint8)
    labels[gm > 127] = 1
    labels[wm > 127] = 2
    truth = make_deformation(to_ants_image(t1, geometry), tmp / "truth", rotation_degrees=8, scale=1.06, shift_um=6000, warp_um=3000, wavelength_um=60000, seed=3)
    moving_t1 = deform(t1, geometry, truth)
    moving_labels = deform(labels, geometry, truth, labels=True)
    moving = tmp / "moving.ome.zarr"
    zarr.save_array(str(tmp / "moving.zarr"), moving_t1)
    convert_volume(str(tmp / "moving.zarr"), str(moving), spacing=[1.0, 1.0, 1.0], unit="millimeter",
                   orientation=geometry.orientation, origin=geometry.origin, chunks=64)  # fmt: skip
    return {"tmp": tmp, "fixed": fixed, "moving": moving, "labels": labels, "moving_labels": moving_labels, "truth": truth, "geometry": geometry}


def test_registration_recovers_a_known_deformation_of_a_human_brain(human_case):
    case = human_case
    out = case["tmp"] / "transform"
    manifest = register_pyramids(str(case["fixed"]), str(case["moving"]), str(out), schedule=HUMAN_TEST_SCHEDULE)
    steps = manifest["steps"]
    assert [s["step"] for s in steps] == ["01-rigid-4000um", "02-affine-4000um", "03-syn-4000um", "04-syn-2000um"]
    assert all(s["accepted"] for s in steps)
    assert steps[-1]["after"]["mi"] > steps[0]["before"]["mi"]
    assert steps[-1]["jacobian_percent_nonpositive"] == 0.0 and steps[-1]["jacobian_min"] > 0

    geometry = case["geometry"]
    fixed_image = to_ants_image(case["labels"], geometry)
    moving_image = to_ants_image(case["moving_labels"], geometry)
    forward = [str(out / p) for p in manifest["outputs"]["forward"]]
    warped = from_ants_image(ants.apply_transforms(fixed_image, moving_image, forward, interpolator="genericLabel"))
    affine_only = from_ants_image(ants.apply_transforms(fixed_image, moving_image, [str(out / "forward/affine.mat")], interpolator="genericLabel"))
    for label, floor in ((1, 0.75), (2, 0.85)):
        dice = _dice(warped, case["labels"], label)
        assert dice >= floor, f"label {label}: Dice {dice:.3f}"
        assert dice > _dice(affine_only, case["labels"], label) + 0.02

    # displacement error of the recovered mapping on brain voxels, in micrometers
    brain = np.argwhere(case["labels"] > 0)[::400]
    points = np.array([ants.transform_index_to_physical_point(fixed_image, [int(i) for i in p[::-1]]) for p in brain])
    residual = residual_um(points, forward, case["truth"])
    # the finest step registers at 2 mm: half a voxel there at the median, 1.25 at the 90th percentile
    assert np.median(residual) < 1000, np.median(residual)
    assert np.percentile(residual, 90) < 2500, np.percentile(residual, 90)
    assert np.median(residual_um(points, [str(out / "forward/affine.mat")], case["truth"])) > np.median(residual)

    # the transform directory: ANTs files, OME-Zarr fields and the manifest agree
    field = zarr.open_group(str(out / "field.ome.zarr"), mode="r")
    assert field["0"].shape[0] == 3 and field.attrs["scalereg_field"]["space"] == "LPS"
    warp = from_ants_image(ants.image_read(str(out / "forward/warp.nii.gz")))
    assert np.allclose(np.moveaxis(field["0"][:], 0, -1), warp)
    assert manifest["fixed"]["fingerprints"] and manifest["libraries"]["antspyx"]
    assert (out / "steps" / "04-syn-2000um" / "qc.png").stat().st_size > 10_000

    # a second run with the same inputs reuses the finished directory
    again = register_pyramids(str(case["fixed"]), str(case["moving"]), str(out), schedule=HUMAN_TEST_SCHEDULE)
    assert again == json.loads((out / "manifest.json").read_text())
    with pytest.raises(InputError, match="other inputs"):
        register_pyramids(str(case["fixed"]), str(case["moving"]), str(out), schedule="human")


def test_same_brain_in_two_orientation_codes_registers_to_near_identity(mouse_pyramid, tmp_path):
    """The mouse brain stored as 'psl' and, reoriented, as 'asr' occupies the same
    physical space: registration must find (almost) nothing to do."""
    layout = read_pyramid(str(mouse_pyramid))
    level = 1  # 100 um
    geometry = layout.level_geometry(level)
    volume = zarr.open_array(str(mouse_pyramid / layout.levels[level].path))[:]
    perm, flips = reorientation(geometry.orientation, "asr")
    moved = np.flip(np.transpose(volume, perm), axis=[i for i, f in enumerate(flips) if f])
    # same LPS position for the same tissue: the new voxel 0 is the old corner voxel
    old_index = np.zeros(3)
    for new_axis, (old_axis, flip) in enumerate(zip(perm, flips)):
        old_index[old_axis] = volume.shape[old_axis] - 1 if flip else 0
    corner_lps = geometry.direction() @ geometry.index_to_physical(old_index)
    new_spacing = tuple(geometry.spacing[p] for p in perm)
    asr = Geometry(spacing=new_spacing, orientation="asr")
    asr = Geometry(spacing=new_spacing, origin=tuple(asr.direction().T @ corner_lps), unit=geometry.unit, orientation="asr")
    zarr.save_array(str(tmp_path / "asr.zarr"), moved)
    moving = tmp_path / "asr.ome.zarr"
    convert_volume(str(tmp_path / "asr.zarr"), str(moving), spacing=asr.spacing, origin=asr.origin, unit=asr.unit, orientation="asr", chunks=64)

    fixed = tmp_path / "psl.ome.zarr"
    zarr.save_array(str(tmp_path / "psl.zarr"), volume)
    convert_volume(str(tmp_path / "psl.zarr"), str(fixed), spacing=geometry.spacing, origin=geometry.origin, unit=geometry.unit, orientation=geometry.orientation, chunks=64)
    schedule = {
        "steps": [
            {"spacing": 200, "transform": "rigid", "iterations": [200, 100], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
            {"spacing": 200, "transform": "syn", "metric": "mattes", "iterations": [20], "shrink_factors": [1], "smoothing_sigmas": [0]},
        ]
    }
    manifest = register_pyramids(str(fixed), str(moving), str(tmp_path / "tx"), schedule=schedule)
    assert manifest["steps"][0]["before"]["ncc"] > 0.99  # already aligned before any optimisation
    fixed_image = to_ants_image(volume, geometry)
    brain = np.argwhere(volume > volume.mean())[::50]
    points = np.array([ants.transform_index_to_physical_point(fixed_image, [int(i) for i in p[::-1]]) for p in brain])
    import pandas as pd

    forward = [str(tmp_path / "tx" / p) for p in manifest["outputs"]["forward"]]
    mapped = ants.apply_transforms_to_points(3, pd.DataFrame(points, columns=["x", "y", "z"]), forward).values
    residual = np.linalg.norm(mapped - points, axis=1)
    assert np.median(residual) < 20, np.median(residual)  # a fifth of a 100 um voxel
    assert residual.max() < 100


def test_a_step_that_makes_the_metric_worse_is_discarded(mouse_pyramid, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("scalereg.register.register_pyramids")  # the module, not the function
    real = module.run_ants_step
    calls = []

    def sabotage(step, fixed, moving, workdir, initial=None, **kwargs):
        result = real(step, fixed, moving, workdir, initial=initial, **kwargs)
        calls.append(step.transform)
        if step.transform == "syn":  # pretend ANTs diverged: the warped image is noise
            noise = ants.from_numpy(np.random.default_rng(0).random(fixed.shape).astype(np.float32), origin=fixed.origin, spacing=fixed.spacing, direction=fixed.direction)
            ants.image_write(noise, result.warped)
        return result

    monkeypatch.setattr(module, "run_ants_step", sabotage)
    schedule = {
        "steps": [
            {"spacing": 200, "transform": "rigid", "iterations": [50], "shrink_factors": [1], "smoothing_sigmas": [0]},
            {"spacing": 200, "transform": "syn", "metric": "mattes", "iterations": [5], "shrink_factors": [1], "smoothing_sigmas": [0]},
        ]
    }
    manifest = register_pyramids(str(mouse_pyramid), str(mouse_pyramid), str(tmp_path / "tx"), schedule=schedule)
    assert calls == ["rigid", "syn"]
    rejected = manifest["steps"][1]
    assert rejected["accepted"] is False and "got worse" in rejected["note"]
    assert manifest["outputs"]["forward"] == ["forward/affine.mat"]  # the syn warp was not kept


def test_masks_and_normalisation(mouse_pyramid, tmp_path):
    layout = read_pyramid(str(mouse_pyramid))
    volume = zarr.open_array(str(mouse_pyramid / "0"))[:]
    geometry = layout.geometry
    mask_raw = tmp_path / "mask.zarr"
    zarr.save_array(str(mask_raw), (volume > volume.mean()).astype(np.uint8))
    mask = tmp_path / "mask.ome.zarr"
    convert_volume(str(mask_raw), str(mask), spacing=geometry.spacing, origin=geometry.origin, orientation=geometry.orientation, labels=True, chunks=64)
    schedule = {
        "steps": [
            {"spacing": 200, "transform": "rigid", "iterations": [50], "shrink_factors": [1], "smoothing_sigmas": [0]},
            {"spacing": 200, "transform": "syn", "metric": "mattes", "iterations": [5], "shrink_factors": [1], "smoothing_sigmas": [0]},
        ]
    }
    manifest = register_pyramids(str(mouse_pyramid), str(mouse_pyramid), str(tmp_path / "tx"), schedule=schedule, fixed_mask=str(mask), moving_mask=str(mask), normalize=True)
    # a brain registered to itself stays put (a SyN step that only adds noise may be discarded)
    assert manifest["steps"][0]["accepted"]
    assert all(step["after"]["ncc"] > 0.99 for step in manifest["steps"])

    empty_raw = tmp_path / "empty.zarr"
    zarr.save_array(str(empty_raw), np.zeros(volume.shape, np.uint8))
    empty = tmp_path / "empty.ome.zarr"
    convert_volume(str(empty_raw), str(empty), spacing=geometry.spacing, origin=geometry.origin, orientation=geometry.orientation, labels=True, chunks=64)
    with pytest.raises(InputError, match="mask is empty"):
        register_pyramids(str(mouse_pyramid), str(mouse_pyramid), str(tmp_path / "tx2"), schedule=schedule, fixed_mask=str(empty))
