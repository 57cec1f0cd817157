"""A Dask worker killed (SIGKILL) in the middle of the tiled warp or of a registration
step: the run completes, and its output is byte-identical to an undisturbed run's."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import QUICK_MOUSE_SCHEDULE
from scalereg.convert.run_block import PROGRESS_DIR
from test_flow_resume import _level_files

pytestmark = pytest.mark.integration


class WorkerKiller:
    """Watches a condition in a thread; when it holds, kills the worker that is running a
    task at that moment with ``kill(client, worker_address)`` (default: SIGKILL its
    process; the nanny starts a new one, Dask reschedules) and records what it killed."""

    def __init__(self, address: str, ready, kill=None):
        from distributed import Client

        self.client = Client(address)
        self.kill = kill or sigkill_worker
        self.ready, self.killed = ready, []
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.ready():
                busy = [worker for worker, keys in self.client.processing().items() if keys]
                if busy:
                    self.killed.append(self.kill(self.client, busy[0]))
                    return
            time.sleep(0.02)

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.client.close()


def sigkill_worker(client, worker: str) -> int:
    """SIGKILL the worker process at ``worker``; returns its pid."""
    pid = client.run(os.getpid, workers=[worker])[worker]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture
def cluster(monkeypatch):
    """Two worker processes (with nannies, as the default profile has), ITK single-threaded
    so that registration is bit-reproducible and outputs can be compared byte for byte."""
    from distributed import LocalCluster

    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as running:
        yield running.scheduler_address


def warp_parameters(mouse_registration, **extra) -> dict:
    """The warp the lost-worker tests disturb: 48 tiles of one chunk each."""
    return {
        "transform": [str(mouse_registration["transform"])],
        "moving": str(mouse_registration["moving"]),
        "reference": str(mouse_registration["fixed"]),
        "memory_budget": "24MiB",
        **extra,
    }


def tiles_done(output: Path, count: int):
    """A condition: ``count`` level-0 tiles of ``output`` are marked finished."""
    markers = output / PROGRESS_DIR / "level-0"
    return lambda: markers.exists() and len(list(markers.iterdir())) >= count


def test_worker_killed_mid_warp(prefect_server, mouse_registration, cluster, tmp_path):
    from flows.warp_volume import warp_volume

    common = warp_parameters(mouse_registration)
    disturbed = tmp_path / "disturbed.ome.zarr"
    killer = WorkerKiller(cluster, tiles_done(disturbed, 4))
    try:
        result = warp_volume(**common, output=str(disturbed), cluster=cluster)
    finally:
        killer.close()
    assert killer.killed, "no worker was killed: the warp finished before the tiles were seen"
    assert result["state"] == "new"

    undisturbed = tmp_path / "undisturbed.ome.zarr"
    warp_volume(**common, output=str(undisturbed), cluster=cluster)
    expected, got = _level_files(undisturbed), _level_files(disturbed)
    assert got.keys() == expected.keys() and [name for name in expected if got[name] != expected[name]] == []


def _transform_files(root: Path) -> dict[str, bytes]:
    """The transform directory's transforms and fields (not records with timings)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (path.suffix in (".mat", ".gz") or "field.ome.zarr" in str(path)) and path.name != "zarr.json"
    }


def test_worker_killed_mid_registration_step(prefect_server, mouse_registration, cluster, tmp_path):
    from flows.register_volume import register_volume

    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(QUICK_MOUSE_SCHEDULE))
    common = {"fixed": str(mouse_registration["fixed"]), "moving": str(mouse_registration["moving"]), "schedule": str(schedule)}
    disturbed = tmp_path / "disturbed"
    # the SyN step (the longest) has started when its directory appears
    killer = WorkerKiller(cluster, lambda: (disturbed / "steps").exists() and any(p.name.startswith("03-") for p in (disturbed / "steps").iterdir()))
    try:
        result = register_volume(**common, out=str(disturbed), cluster=cluster)
    finally:
        killer.close()
    assert killer.killed, "no worker was killed: the registration finished first"
    assert result["state"] == "new"
    manifest = json.loads((disturbed / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["step"].startswith("03-"))
    assert step["ran_on"]["pid"] != killer.killed[0]  # redone by a live worker

    undisturbed = tmp_path / "undisturbed"
    register_volume(**common, out=str(undisturbed), cluster=cluster)
    expected, got = _transform_files(undisturbed), _transform_files(disturbed)
    assert len(expected) >= 3 and got.keys() == expected.keys()
    assert [name for name in expected if got[name] != expected[name]] == []
