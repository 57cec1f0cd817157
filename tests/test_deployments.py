"""Deployments end to end: a real `prefect server start` on loopback (infra/prefect/start.sh),
`prefect deploy --all` from deployments/, a process worker, runs triggered from the CLI
and from Python, parameters refused by the server, outputs confined to the roots, and
the sweep registering each new volume once even when two sweeps run at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import phantom
from scalereg.errors import BAD_INPUT_STATE

pytestmark = [pytest.mark.deployments, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
SPACING = [100.0, 100.0, 100.0]
TINY_SCHEDULE = {
    "name": "tiny",
    "steps": [
        {"spacing": 200, "transform": "rigid", "iterations": [100, 50], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "syn", "metric": "mattes", "iterations": [10], "shrink_factors": [1], "smoothing_sigmas": [0]},
    ],
}
# One in-process Dask worker per run: several runs share the machine's 2 cores.
THREADED_CLUSTER = {
    "cluster_class": "distributed.LocalCluster",
    "cluster_kwargs": {"n_workers": 1, "threads_per_worker": 2, "processes": False, "memory_limit": "2GiB", "dashboard_address": ":0"},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A Prefect server, the scalereg-process pool and a worker, started by the script
    users run, with the deployments of deployments/prefect.yaml; stopped afterwards."""
    tmp = tmp_path_factory.mktemp("prefect-site")
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {
        **os.environ,
        "PREFECT_BIN": PREFECT,
        "SCALEREG_PREFECT_STATE": str(tmp / "state"),
        "SCALEREG_PREFECT_PORT": api.split(":")[-1].split("/")[0],
        "SCALEREG_OUTPUT_ROOTS": str(tmp / "outputs"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    try:
        started = subprocess.run(["bash", str(REPO / "infra/prefect/start.sh"), "--worker"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO / "deployments", env=env, capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        yield {"api": api, "env": env, "tmp": tmp, "outputs": tmp / "outputs", "data": _data(tmp / "data")}
    finally:
        subprocess.run(["bash", str(REPO / "infra/prefect/stop.sh")], env=env, timeout=90)


def _data(folder: Path) -> dict[str, str]:
    """A fixed phantom, two moved copies arriving in an input folder, a tiny schedule."""
    (folder / "incoming").mkdir(parents=True)
    volume = phantom((64, 64, 64))
    tifffile.imwrite(folder / "fixed.tif", volume)
    tifffile.imwrite(folder / "incoming" / "a.tif", np.roll(volume, (3, -2, 2), axis=(0, 1, 2)))
    tifffile.imwrite(folder / "incoming" / "b.tif", np.roll(volume, (-2, 3, 1), axis=(0, 1, 2)))
    (folder / "schedule.json").write_text(json.dumps(TINY_SCHEDULE))
    (folder / "cluster.yaml").write_text(json.dumps(THREADED_CLUSTER))  # YAML is a superset of JSON
    return {name: str(folder / name) for name in ("fixed.tif", "incoming", "schedule.json", "cluster.yaml")}


@contextmanager
def _client(site):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: site["api"]}), get_client(sync_client=True) as client:
        yield client


def _wait(site, run_id, timeout: float = 240):
    deadline = time.monotonic() + timeout
    with _client(site) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run.state}")


def _artifact_keys(site, run_id) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client(site) as client:
        return {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))}


def _prefect_run(site, deployment: str, **parameters) -> subprocess.CompletedProcess:
    command = [PREFECT, "deployment", "run", deployment]
    for name, value in parameters.items():
        command += ["--param", f"{name}={json.dumps(value) if not isinstance(value, str) else value}"]
    return subprocess.run(command, env=site["env"], capture_output=True, text=True, timeout=60)


def _image(site, uri: str) -> dict:
    return {"uri": uri, "spacing": SPACING, "orientation": "asr"}


def _registration_parameters(site) -> dict:
    data = site["data"]
    return {"registration": {"schedule": data["schedule.json"]}, "chunks": 32, "cluster": data["cluster.yaml"]}


def test_runs_from_the_cli_and_python_complete_and_bad_parameters_are_refused(site):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = site["data"]
    # from the CLI, as a user would: the output is relative, so it lands under the root
    cli = _prefect_run(
        site, "register-brain/register-brain", fixed=_image(site, data["fixed.tif"]), moving=_image(site, f"{data['incoming']}/a.tif"),
        out="sweep/a", **_registration_parameters(site),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    cli_run = re.search(r"UUID: ([0-9a-f-]{36})", cli.stdout).group(1)
    with temporary_settings(updates={PREFECT_API_URL: site["api"]}):
        python_run = run_deployment(
            "convert-volume/convert-volume", timeout=0,
            parameters={"source": data["fixed.tif"], "output": str(site["outputs"] / "converted" / "fixed.ome.zarr"), "spacing": SPACING, "orientation": "asr", "cluster": data["cluster.yaml"]},
        )  # fmt: skip
        # valid for the schema, but outside the output roots: the run fails once, as bad input
        escaping = run_deployment(
            "convert-volume/convert-volume", timeout=0,
            parameters={"source": data["fixed.tif"], "output": str(site["outputs"] / ".." / "escaped.ome.zarr"), "spacing": SPACING},
        )  # fmt: skip

    # refused by the server before any run exists, with the field and the reason
    with _client(site) as client:
        runs_before = len(client.read_flow_runs())
    bad_orientation = _prefect_run(site, "register-brain/register-brain", fixed={"uri": "f.tif", "orientation": "aap"}, moving={"uri": "m.tif"}, out="x")
    assert "Validation failed for field 'fixed.orientation'" in bad_orientation.stdout + bad_orientation.stderr
    assert "'aap' does not match" in bad_orientation.stdout + bad_orientation.stderr
    bad_budget = _prefect_run(site, "register-brain/register-brain", fixed={"uri": "f.tif"}, moving={"uri": "m.tif"}, out="x", warp={"memory_budget": "lots"})
    assert "Validation failed for field 'warp.memory_budget'" in bad_budget.stdout + bad_budget.stderr
    with temporary_settings(updates={PREFECT_API_URL: site["api"]}):
        with pytest.raises(Exception, match=r"fixed\.spacing\[1\].*less than or equal to the minimum of 0"):
            run_deployment("register-brain/register-brain", timeout=0, parameters={"fixed": {"uri": "f.tif", "spacing": [1, -1, 1]}, "moving": {"uri": "m.tif"}, "out": "x"})
        with pytest.raises(Exception, match=r"'nearest-ish' is not one of"):
            run_deployment("register-brain/register-brain", timeout=0, parameters={"fixed": {"uri": "f.tif"}, "moving": {"uri": "m.tif"}, "out": "x", "warp": {"interpolation": "nearest-ish"}})
    with _client(site) as client:
        assert len(client.read_flow_runs()) == runs_before, "a refused run must not exist"

    escaped = _wait(site, escaping.id)
    assert escaped.state.name == BAD_INPUT_STATE and "outside the output roots" in escaped.state.message
    assert not (site["outputs"].parent / "escaped.ome.zarr").exists()

    converted = _wait(site, python_run.id)
    assert converted.state.is_completed(), converted.state
    assert (site["outputs"] / "converted" / "fixed.ome.zarr" / "zarr.json").exists()
    registered = _wait(site, cli_run)
    assert registered.state.is_completed(), registered.state
    assert (site["outputs"] / "sweep" / "a" / "report.md").exists()
    assert "a-pipeline-report" in _artifact_keys(site, registered.id)
    with _client(site) as client:
        children = client.read_flow_runs(flow_run_filter=_children(converted.id))
    assert any({"fixed-report", "fixed-level-0"} <= _artifact_keys(site, child.id) for child in children)


def _children(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))


def test_the_sweep_registers_each_new_volume_once(site):
    """Runs after the test above, which registered volume a to the sweep's output."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = site["data"]
    assert (site["outputs"] / "sweep" / "a" / "report.md").exists(), "needs the registration of a (the test above)"
    with _client(site) as client:
        sweep = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["sweep-inputs"])))[0]
        assert [s.schedule.cron for s in sweep.schedules] == ["*/15 * * * *"]  # on a schedule (deployed off: site settings first)
    parameters = {
        "inputs": data["incoming"], "fixed": _image(site, data["fixed.tif"]), "moving": {"spacing": SPACING, "orientation": "asr"},
        "output": "sweep", "min_age_seconds": 0, **_registration_parameters(site),
    }  # fmt: skip
    # two sweeps at once: the server's idempotency keys let only one start b
    with temporary_settings(updates={PREFECT_API_URL: site["api"]}):
        sweeps = [run_deployment("sweep-inputs/sweep-inputs", parameters=parameters, timeout=0) for _ in range(2)]
    for run in sweeps:
        assert _wait(site, run.id).state.is_completed()
    started = _register_brain_runs(site)
    assert sorted(run.parameters["moving"]["uri"].rsplit("/", 1)[-1] for run in started) == ["b.tif"], "b once, a (done) never"
    b = _wait(site, started[0].id)
    assert b.state.is_completed(), b.state
    assert (site["outputs"] / "sweep" / "b" / "report.md").exists()
    assert "b-pipeline-report" in _artifact_keys(site, b.id)

    # a third sweep, after b is done: nothing new
    with temporary_settings(updates={PREFECT_API_URL: site["api"]}):
        again = run_deployment("sweep-inputs/sweep-inputs", parameters=parameters, timeout=0)
    assert _wait(site, again.id).state.is_completed()
    assert len(_register_brain_runs(site)) == 1
    with _client(site) as client:
        tables = [a for a in client.read_artifacts() if (a.key or "").startswith("sweep-")]
    rows = json.loads(max(tables, key=lambda a: a.created).data)  # the third sweep's
    assert {row["volume"]: row["action"] for row in rows} == {"a": "done", "b": "done"}


def _register_brain_runs(site):
    """register-brain runs the sweeps started (tagged by the sweep)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _client(site) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["scalereg-sweep"])))


def test_the_register_brain_form_renders_in_the_ui(site, tmp_path):
    """The UI (headless Chromium) shows the parameter models as a form: the script waits
    for every expected label (deployments/screenshot_form.py) and takes the picture."""
    import runpy

    assert shutil.which("chromium-headless-shell"), "Debian's chromium-headless-shell is missing: run infra/test-tools.sh (the README's test command does)"

    script = runpy.run_path(str(REPO / "deployments" / "screenshot_form.py"))
    with _client(site) as client:
        deployment = client.read_deployment_by_name("register-brain/register-brain")
    png = script["screenshot"](f"{site['api'].removesuffix('/api')}/deployments/deployment/{deployment.id}/run", 1400, 2600, timeout=60)
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    (tmp_path / "form.png").write_bytes(png)
