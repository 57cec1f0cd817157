"""A SLURM job of the run's dask-jobqueue cluster cancelled (scancel) in the middle of
the tiled warp or of a registration step: the run completes on the job that is left,
and its output is byte-identical to an undisturbed run's on the same cluster."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import QUICK_MOUSE_SCHEDULE
from flows.cluster import dask_cluster
from test_flow_resume import _level_files
from test_lost_workers import WorkerKiller, _transform_files, tiles_done, warp_parameters
from test_slurm import _queued_jobs, _wait_until_gone, slurm_up  # noqa: F401 - slurm_up: autouse

pytestmark = pytest.mark.integration


def scancel_job(client, worker: str) -> str:
    """Cancel the SLURM job that runs the worker at ``worker``; returns its job id."""
    job = client.run(lambda: os.environ["SLURM_JOB_ID"], workers=[worker])[worker]
    assert _queued_jobs().get(job) == "RUNNING", job
    subprocess.run(["scancel", job], check=True, timeout=30)
    return job


@pytest.fixture
def slurm_cluster(monkeypatch):
    """The slurm profile's cluster (two single-core jobs); ITK single-threaded so that
    registration is bit-reproducible (sbatch hands the jobs this environment)."""
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with dask_cluster("slurm") as address:
        yield address


@pytest.mark.timeout(600)
def test_slurm_job_cancelled_mid_warp(prefect_server, mouse_registration, slurm_cluster, tmp_path):
    from flows.warp_volume import warp_volume

    common = warp_parameters(mouse_registration, cluster=slurm_cluster)
    undisturbed = tmp_path / "undisturbed.ome.zarr"
    warp_volume(**common, output=str(undisturbed))

    disturbed = tmp_path / "disturbed.ome.zarr"
    killer = WorkerKiller(slurm_cluster, tiles_done(disturbed, 4), kill=scancel_job)
    try:
        result = warp_volume(**common, output=str(disturbed))
    finally:
        killer.close()
    assert killer.killed, "no job was cancelled: the warp finished before the tiles were seen"
    assert _wait_until_gone(set(killer.killed)) == set()
    assert result["state"] == "new"
    expected, got = _level_files(undisturbed), _level_files(disturbed)
    assert got.keys() == expected.keys() and [name for name in expected if got[name] != expected[name]] == []


@pytest.mark.timeout(900)
def test_slurm_job_cancelled_mid_registration_step(prefect_server, mouse_registration, slurm_cluster, tmp_path):
    from flows.register_volume import register_volume

    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(QUICK_MOUSE_SCHEDULE))
    common = {"fixed": str(mouse_registration["fixed"]), "moving": str(mouse_registration["moving"]), "schedule": str(schedule), "cluster": slurm_cluster}
    undisturbed = tmp_path / "undisturbed"
    register_volume(**common, out=str(undisturbed))

    disturbed = tmp_path / "disturbed"
    # the SyN step (the longest) has started when its directory appears
    started = lambda: (disturbed / "steps").exists() and any(p.name.startswith("03-") for p in (disturbed / "steps").iterdir())  # noqa: E731
    killer = WorkerKiller(slurm_cluster, started, kill=scancel_job)
    try:
        result = register_volume(**common, out=str(disturbed))
    finally:
        killer.close()
    assert killer.killed, "no job was cancelled: the registration finished first"
    assert result["state"] == "new"
    manifest = json.loads((disturbed / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["step"].startswith("03-"))
    assert step["ran_on"]["slurm_job"] not in killer.killed  # redone in the job that is left
    expected, got = _transform_files(undisturbed), _transform_files(disturbed)
    assert len(expected) >= 3 and got.keys() == expected.keys()
    assert [name for name in expected if got[name] != expected[name]] == []
