"""Flows whose tasks run as SLURM jobs (dask-jobqueue) on the real single-node SLURM
that infra/slurm/start.sh starts, against a real Prefect server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from prefect import flow, task
from prefect_dask import DaskTaskRunner

from conftest import phantom
from flows.cluster import PROFILES_DIR, dask_cluster
from scalereg.omezarr import read_pyramid, validate_pyramid

pytestmark = pytest.mark.integration

START = "infra/slurm/start.sh"
JOB_NAME = yaml.safe_load((PROFILES_DIR / "slurm.yaml").read_text())["cluster_kwargs"]["job_name"]


def _slurm(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def _queued_jobs() -> dict[str, str]:
    """Job id -> state of every job SLURM still lists (pending, running, completing)."""
    lines = _slurm("squeue", "--noheader", "--format=%i %T").split()
    return dict(zip(lines[0::2], lines[1::2]))


def _wait_until_gone(job_ids: set[str], timeout: float = 30) -> set[str]:
    deadline = time.monotonic() + timeout
    while (left := job_ids & set(_queued_jobs())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="session", autouse=True)  # session: checked before the Prefect server starts
def slurm_up():
    """The tests need a running SLURM; they do not start one themselves."""
    if shutil.which("sinfo") is None:
        pytest.fail(f"sinfo not found: SLURM is not installed; run `bash {START}` first", pytrace=False)
    sinfo = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True, timeout=60)
    if sinfo.returncode != 0:
        pytest.fail(f"SLURM is not running (sinfo: {sinfo.stderr.strip()}); run `bash {START}` first", pytrace=False)
    states = sinfo.stdout.split()
    if not any(state in ("idle", "mixed", "allocated", "completing") for state in states):
        pytest.fail(f"no SLURM node is up (states: {states}); run `bash {START}` first", pytrace=False)


@task
def where_am_i(index: int) -> dict[str, str | int | None]:
    time.sleep(0.2)  # long enough for both workers to take some
    return {
        "index": index,
        "job": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
        "api": os.environ.get("PREFECT_API_URL"),
    }


@flow(name="slurm-probe")
def slurm_probe(count: int) -> list[dict]:
    return [future.result() for future in where_am_i.map(range(count))]


@pytest.mark.timeout(120)
def test_tasks_run_in_slurm_jobs_that_end_with_the_cluster(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    api_before = os.environ.get("PREFECT_API_URL")
    with dask_cluster("slurm") as address:
        probe = slurm_probe.with_options(task_runner=DaskTaskRunner(address=address))
        state = probe(count=8, return_state=True)
        results = state.result()
        queued = _queued_jobs()
        api_during = os.environ.get("PREFECT_API_URL")

    assert [row["index"] for row in results] == list(range(8))
    jobs = {row["job"] for row in results}
    assert None not in jobs, results
    # real SLURM jobs of this cluster, running while the cluster was up
    assert all(queued.get(job) == "RUNNING" for job in jobs), (jobs, queued)
    for job in jobs:
        assert f"JobName={JOB_NAME}" in _slurm("scontrol", "show", "job", job)
    assert {row["host"] for row in results} == {socket.gethostname()}
    # the jobs got this process's Prefect API (PREFECT_API_URL outlives the constructor)
    assert api_during == PREFECT_API_URL.value()
    assert {row["api"] for row in results} == {api_during}
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert len(task_runs) == 8 and all(run.state.is_completed() for run in task_runs)

    # after the block: the variable is restored and the jobs are cancelled
    assert os.environ.get("PREFECT_API_URL") == api_before
    assert _wait_until_gone(jobs) == set()


@pytest.mark.timeout(120)
def test_convert_flow_on_slurm_writes_a_valid_pyramid(prefect_server, tmp_path):
    from flows.convert_volume import convert_volume

    volume = phantom((64, 70, 80), "uint16")
    source = tmp_path / "brain.tif"
    tifffile.imwrite(source, volume)
    out = tmp_path / "brain.ome.zarr"
    log_directory = Path(yaml.safe_load((PROFILES_DIR / "slurm.yaml").read_text())["cluster_kwargs"]["log_directory"])
    logs_before = set(log_directory.glob(f"{JOB_NAME}-*.err"))

    result = convert_volume(
        source=str(source), output=str(out), spacing=[50, 50, 50], orientation="psl", chunks=32, cluster="slurm"
    )

    assert result["state"] == "new"
    assert validate_pyramid(str(out)) == []
    layout = read_pyramid(str(out))
    assert len(layout.levels) > 1
    assert layout.geometry.orientation == "psl"
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)
    # the blocks ran in SLURM jobs of this flow run, and those jobs are gone now
    jobs = {path.stem.rpartition("-")[2] for path in set(log_directory.glob(f"{JOB_NAME}-*.err")) - logs_before}
    assert len(jobs) == 2, jobs
    assert _wait_until_gone(jobs) == set()


@pytest.mark.timeout(600)
def test_register_brain_on_slurm_runs_every_stage_in_slurm_jobs(prefect_server, sample_volumes, mouse_registration, tmp_path):
    """The whole pipeline with cluster="slurm": one SLURMCluster for the run, its workers
    SLURM jobs that convert, register (each step records its job) and warp."""
    import json

    from conftest import QUICK_MOUSE_SCHEDULE
    from flows.register_brain import register_brain

    mouse = sample_volumes["mouse"]
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(QUICK_MOUSE_SCHEDULE))
    out = tmp_path / "slurmbrain"
    log_directory = Path(yaml.safe_load((PROFILES_DIR / "slurm.yaml").read_text())["cluster_kwargs"]["log_directory"])
    logs_before = set(log_directory.glob(f"{JOB_NAME}-*.err"))

    result = register_brain(
        fixed={"uri": str(mouse.path), "spacing": list(mouse.spacing), "orientation": mouse.orientation},
        moving={"uri": str(mouse_registration["moving"])}, out=str(out), registration={"schedule": str(schedule)},
        chunks=64, cluster="slurm",
    )  # fmt: skip

    stages = {s["stage"]: s["state"] for s in result["stages"]}
    assert stages["convert fixed"] == "written" and stages["convert moving"].startswith("skipped")
    assert stages["register"] == "new" and stages["warp"] == "written"
    jobs = {path.stem.rpartition("-")[2] for path in set(log_directory.glob(f"{JOB_NAME}-*.err")) - logs_before}
    assert len(jobs) == 2, jobs  # one cluster (two jobs) for the whole run, stage flows included
    manifest = json.loads((out / "transform" / "manifest.json").read_text())
    assert {step["ran_on"].get("slurm_job") for step in manifest["steps"]} <= jobs
    assert all(step["ran_on"].get("slurm_job") for step in manifest["steps"])
    # the budget came from the jobs' memory (4 GiB, one thread each): 3/4 of it
    assert manifest["plan"]["memory_budget"] == "3.0 GiB"
    assert validate_pyramid(str(out / "warped.ome.zarr")) == []
    fixed = zarr.open_array(str(out / "fixed.ome.zarr" / "0"))[:].astype(np.float64)
    warped = zarr.open_array(str(out / "warped.ome.zarr" / "0"))[:].astype(np.float64)
    assert np.corrcoef(fixed.ravel(), warped.ravel())[0, 1] > 0.95
    assert _wait_until_gone(jobs) == set()
