"""The whole pipeline (register-brain flow) against a real Prefect server on a LocalCluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from conftest import QUICK_MOUSE_SCHEDULE, phantom
from scalereg.errors import BAD_INPUT_STATE
from scalereg.omezarr import validate_pyramid

pytestmark = pytest.mark.integration


def _artifacts(key_prefix: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key_prefix)))


def _child_runs(parent_id, names):
    """The flow runs named ``names`` (their flows' names) that ran inside the flow run ``parent_id``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(names))),
        )
        flows = {run.flow_id: client.read_flow(run.flow_id).name for run in runs}
    assert sorted(flows[run.flow_id] for run in runs) == sorted(names)
    return {flows[run.flow_id]: run for run in runs}


def _ncc(a, b) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_register_brain_runs_every_stage_and_resumes(prefect_server, sample_volumes, mouse_registration, tmp_path):
    from flows.register_brain import register_brain

    mouse = sample_volumes["mouse"]
    moved = mouse_registration["tmp"] / "moved.zarr"  # a plain zarr array: converted by the flow
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(QUICK_MOUSE_SCHEDULE))
    out = tmp_path / "brainrun"
    geometry = {"spacing": list(mouse.spacing), "orientation": mouse.orientation}
    options = dict(
        fixed={"uri": str(mouse.path), **geometry}, moving={"uri": str(moved), **geometry}, out=str(out),
        registration={"schedule": str(schedule)}, chunks=64,
    )  # fmt: skip
    state = register_brain(**options, return_state=True)
    result = state.result()
    stages = {s["stage"]: s["state"] for s in result["stages"]}
    # both conversions are child runs of this run, the fixed one started first (that they
    # run side by side is shown by the test of a failing conversion below)
    conversions = _child_runs(state.state_details.flow_run_id, ("convert-fixed", "convert-moving"))
    assert conversions["convert-fixed"].start_time <= conversions["convert-moving"].start_time
    assert stages == {"convert fixed": "written", "convert moving": "written", "register": "new", "warp": "written"}
    for name in ("fixed.ome.zarr", "moving.ome.zarr", "warped.ome.zarr"):
        assert validate_pyramid(str(out / name)) == [], name
    manifest = json.loads((out / "transform" / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"]] == ["01-rigid-200um", "02-affine-200um", "03-syn-100um"]
    fixed = zarr.open_array(str(out / "fixed.ome.zarr" / "0"))[:]
    moving = zarr.open_array(str(out / "moving.ome.zarr" / "0"))[:]
    warped = zarr.open_array(str(out / "warped.ome.zarr" / "0"))[:]
    assert _ncc(warped, fixed) > _ncc(moving, fixed) + 0.05
    report = (out / "report.md").read_text()
    assert "warped.ome.zarr" in report and "03-syn-100um" in report

    artifacts = _artifacts("brainrun-transform-")
    keys = {a.key for a in artifacts}
    assert "brainrun-transform-steps" in keys and "brainrun-transform-report" in keys
    assert {"brainrun-transform-qc-01-rigid-200um", "brainrun-transform-qc-03-syn-100um"} <= keys

    def latest(key):  # an artifact key gets a new version each time it is published
        return max((a for a in artifacts if a.key == key), key=lambda a: a.created)

    table = latest("brainrun-transform-steps")
    assert "03-syn-100um" in str(table.data) and "jacobian_min" in str(table.data)
    picture = latest("brainrun-transform-qc-03-syn-100um")
    assert "data:image/png;base64," in str(picture.data)
    assert any(a.key == "brainrun-pipeline-report" for a in _artifacts("brainrun-"))

    # the same run again: every stage is recognised as done, nothing recomputed
    again = register_brain(**options)
    stages = {s["stage"]: s["state"] for s in again["stages"]}
    assert stages["convert fixed"].startswith("skipped") and stages["convert moving"].startswith("skipped")
    assert stages["register"].startswith("skipped") and stages["warp"].startswith("skipped")
    assert "skipped" in (out / "report.md").read_text()


def test_register_brain_bad_input_fails_once_with_the_message(prefect_server, tmp_path):
    from flows.register_brain import register_brain

    state = register_brain(fixed=str(tmp_path / "missing.nii.gz"), moving=str(tmp_path / "missing.nii.gz"), out=str(tmp_path / "o"), return_state=True)
    assert state.is_failed() and state.name == BAD_INPUT_STATE
    assert "missing.nii.gz" in state.message and "Traceback" not in state.message


def test_a_conversion_that_finds_bad_input_stops_the_other_at_once(prefect_server, tmp_path):
    """The fixed volume has a NaN in its first block; the moving one is large and still
    converting when that is found: the run fails with the NaN message, the moving
    conversion stops (Cancelled) and its pyramid stays marked incomplete.  (Run one after
    the other, the moving conversion would never have started.)"""
    from flows.register_brain import register_brain
    from flows.side_by_side import STOPPED
    from scalereg.omezarr import read_pyramid

    bad = phantom((32, 32, 32), "float32")
    bad[0, 1, 1] = np.nan
    zarr.create_array(str(tmp_path / "nan.zarr"), data=bad, chunks=(16, 16, 16))
    zarr.create_array(str(tmp_path / "big.zarr"), data=phantom((256, 256, 256), "uint16"), chunks=(32, 32, 32))
    geometry = {"spacing": [10.0, 10.0, 10.0], "orientation": "asr"}
    out = tmp_path / "stopped"
    state = register_brain(
        fixed={"uri": str(tmp_path / "nan.zarr"), **geometry}, moving={"uri": str(tmp_path / "big.zarr"), **geometry},
        out=str(out), chunks=32, return_state=True,
    )  # fmt: skip
    assert state.is_failed() and state.name == BAD_INPUT_STATE
    assert "nan.zarr" in state.message and "NaN/Inf voxels" in state.message
    conversions = _child_runs(state.state_details.flow_run_id, ("convert-fixed", "convert-moving"))
    assert conversions["convert-fixed"].state.is_failed()
    moving = conversions["convert-moving"].state
    assert moving.is_cancelled() and moving.message == STOPPED
    assert (read_pyramid(str(out / "moving.ome.zarr")).attributes.get("status") or {}).get("status") != "complete"


def test_cli_run_reports_bad_input_in_one_line(prefect_server, tmp_path, capsys):
    from scalereg.cli import main

    code = main(["run", "--fixed", str(tmp_path / "none.tif"), "--moving", str(tmp_path / "none.tif"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "none.tif" in err and "Traceback" not in err
