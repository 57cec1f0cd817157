"""Flows against a real Prefect server on Dask clusters: memory budgets from the workers,
retries of transient faults and hangs, no retries of bad input."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import zarr

from conftest import phantom
from flows.cluster import AUTO, ClusterCapacity, cluster_capacity
from scalereg.convert.plan_conversion import DEFAULT_MEMORY_BUDGET
from scalereg.errors import BAD_INPUT_STATE, InputError
from scalereg.units import parse_bytes

pytestmark = pytest.mark.integration


@contextmanager
def in_process_cluster(n_workers: int, threads_per_worker: int, memory_limit: str):
    """A Dask cluster whose workers are threads of the test process (so that a test can
    plant faults in the code the tasks run).  Their memory_limit is what the flows read;
    the workers' memory monitor is off, since it would measure the whole test process."""
    import dask
    from distributed import LocalCluster

    monitor_off = {f"distributed.worker.memory.{key}": False for key in ("target", "spill", "pause", "terminate")}
    with dask.config.set(monitor_off), LocalCluster(
        n_workers=n_workers, threads_per_worker=threads_per_worker, processes=False, memory_limit=memory_limit, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def threaded_cluster():
    """Two single-thread in-process workers of 1 GiB each."""
    with in_process_cluster(2, 1, "1GiB") as address:
        yield address


def _source(tmp_path, shape=(48, 64, 64)):
    volume = phantom(shape, "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), volume)
    return volume, str(raw)


def test_auto_budgets_follow_the_workers_memory():
    small = ClusterCapacity(threads=4, memory_per_task=parse_bytes("1GiB"))
    assert parse_bytes(small.memory_budget(AUTO, "registration")) == parse_bytes("768MiB")
    assert parse_bytes(small.memory_budget(AUTO, "warp")) == parse_bytes("512MiB")
    tiny = ClusterCapacity(threads=4, memory_per_task=parse_bytes("400MiB"))
    assert parse_bytes(tiny.memory_budget(None, "conversion")) == parse_bytes("200MiB")  # half of it
    big = ClusterCapacity(threads=2, memory_per_task=parse_bytes("64GiB"))
    assert parse_bytes(big.memory_budget(None, "conversion")) == parse_bytes(DEFAULT_MEMORY_BUDGET)  # capped at the default
    assert parse_bytes(big.memory_budget(AUTO, "registration")) == parse_bytes("48GiB")  # finer levels fit
    assert parse_bytes(big.memory_budget(AUTO, "warp")) == parse_bytes("768MiB")
    assert ClusterCapacity(threads=2, memory_per_task=None).memory_budget(AUTO, "registration") == "8GiB"
    assert small.memory_budget("900MiB", "registration") == "900MiB"
    with pytest.raises(InputError, match="registration memory budget.*2GiB is more than a task gets.*1.0 GiB"):
        small.memory_budget("2GiB", "registration")


def test_capacity_is_read_from_the_running_workers(threaded_cluster):
    capacity = cluster_capacity(threaded_cluster)
    assert capacity.threads == 2
    assert capacity.memory_per_task == parse_bytes("1GiB")


def test_auto_conversion_budget_sizes_blocks_from_worker_memory(prefect_server, tmp_path):
    from flows.convert_volume import convert_volume
    from scalereg.convert import plan_conversion

    volume, raw = _source(tmp_path)
    # a worker of 512 KiB per thread: "auto" gives 256 KiB, far below the default
    with in_process_cluster(1, 2, "1MiB") as address:
        result = convert_volume(source=raw, output=str(tmp_path / "auto.ome.zarr"), spacing=[1, 1, 1], chunks=16, cluster=address)
    expected = plan_conversion(raw, str(tmp_path / "x.ome.zarr"), spacing=[1, 1, 1], chunks=16, memory_budget="256KiB")
    default = plan_conversion(raw, str(tmp_path / "y.ome.zarr"), spacing=[1, 1, 1], chunks=16)
    assert result["levels"][0]["blocks"] == len(expected.levels[0].blocks) > len(default.levels[0].blocks)
    assert np.array_equal(zarr.open_array(str(tmp_path / "auto.ome.zarr" / "0"))[:], volume)


def test_a_budget_over_the_workers_memory_fails_the_flow_once(prefect_server, threaded_cluster, tmp_path):
    from flows.register_brain import register_brain

    state = register_brain(
        fixed=str(tmp_path / "f.nii.gz"), moving=str(tmp_path / "m.nii.gz"), out=str(tmp_path / "out"),
        registration={"memory_budget": "16GiB"}, cluster=threaded_cluster, return_state=True,
    )  # fmt: skip
    assert state.is_failed() and state.name == BAD_INPUT_STATE
    assert "registration memory budget" in state.message and "16GiB" in state.message
    assert not (tmp_path / "out").exists()


_LIVE_FAULTS: dict[int, "_Faults"] = {}


def _live_faults(key: int) -> "_Faults":
    return _LIVE_FAULTS[key]


class _Faults:
    """Wraps tasks.convert.run_blocks: the first call for each chosen batch fails (or
    hangs); later calls run the real function.  Calls are counted per batch.

    Dask pickles each task even for in-process workers (with the task's function and
    so this object): unpickling returns this same live object, so counts are shared.
    """

    def __init__(self, real, fail_level: int, mode: str):
        self.real, self.fail_level, self.mode = real, fail_level, mode
        self.calls: dict[tuple, int] = {}
        self.lock = threading.Lock()
        _LIVE_FAULTS[id(self)] = self

    def __reduce__(self):
        return _live_faults, (id(self),)

    def __call__(self, plan, level, blocks):
        key = (level, tuple(blocks))
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            first = self.calls[key] == 1
        if first and level == self.fail_level:
            if self.mode == "oserror":
                raise OSError(5, "Input/output error (injected)", plan.output)
            if self.mode == "hang":
                while True:  # a read that never returns
                    time.sleep(0.05)
            if self.mode == "bad-input":
                raise InputError(plan.source.uri, "injected bad input")
        return self.real(plan, level, blocks)


@pytest.mark.parametrize("mode", ["oserror", "hang"])
def test_transient_faults_and_hangs_are_retried_and_the_run_completes(prefect_server, threaded_cluster, tmp_path, monkeypatch, mode):
    import tasks.convert
    from flows.convert_volume import convert_volume

    volume, raw = _source(tmp_path)
    faults = _Faults(tasks.convert.run_blocks, fail_level=0, mode=mode)
    monkeypatch.setattr(tasks.convert, "run_blocks", faults)
    monkeypatch.setenv("SCALEREG_BLOCK_TIMEOUT_SECONDS", "3")
    out = tmp_path / f"{mode}.ome.zarr"
    result = convert_volume(source=raw, output=str(out), spacing=[1, 1, 1], chunks=16, memory_budget="256KiB", cluster=threaded_cluster)
    level0 = [count for (level, _), count in faults.calls.items() if level == 0]
    assert len(level0) > 1 and all(count == 2 for count in level0)  # every level-0 batch: failed once, retried once
    assert all(count == 1 for (level, _), count in faults.calls.items() if level > 0)
    assert result["state"] == "new"
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)
    assert zarr.open_group(str(out), mode="r").attrs["scalereg"]["status"] == "complete"


def test_bad_input_in_a_task_is_not_retried(prefect_server, threaded_cluster, tmp_path, monkeypatch):
    import tasks.convert
    from flows.convert_volume import convert_volume

    _, raw = _source(tmp_path)
    faults = _Faults(tasks.convert.run_blocks, fail_level=0, mode="bad-input")
    monkeypatch.setattr(tasks.convert, "run_blocks", faults)
    state = convert_volume(
        source=raw, output=str(tmp_path / "bad.ome.zarr"), spacing=[1, 1, 1], chunks=16, memory_budget="256KiB",
        cluster=threaded_cluster, return_state=True,
    )  # fmt: skip
    assert state.is_failed() and state.name == BAD_INPUT_STATE and "injected bad input" in state.message
    assert faults.calls and all(count == 1 for count in faults.calls.values())


@pytest.fixture
def counted_local_clusters(monkeypatch):
    """Every distributed.LocalCluster the flows start, in order."""
    import distributed

    started = []

    class Counted(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Counted)
    return started


def test_a_cluster_started_ahead_is_the_one_the_flow_runs_on(prefect_server, counted_local_clusters, tmp_path):
    """The CLI starts the run's cluster while Prefect's server comes up; the flow takes
    that cluster over (no second one) and closes it; its workers imported the block
    tasks' modules as they started (tasks/worker_preload.py)."""
    import sys

    from distributed import Client

    import flows.cluster as cluster_module
    from flows.convert_volume import convert_volume

    _, raw = _source(tmp_path)
    cluster_module.prestart_cluster("local")
    address = cluster_module._PRESTARTED["local"][1].result(timeout=120)
    with Client(address) as client:
        preloaded = client.run(lambda: "tasks.worker_preload" in sys.modules and "tasks.convert" in sys.modules)
    assert preloaded and all(preloaded.values()), preloaded
    state = convert_volume(source=raw, output=str(tmp_path / "out.ome.zarr"), spacing=[1.0, 1.0, 1.0], cluster="local", return_state=True)
    assert state.is_completed(), state.message
    assert len(counted_local_clusters) == 1 and counted_local_clusters[0].scheduler_address == address
    assert counted_local_clusters[0].status.name == "closed" and not cluster_module._PRESTARTED


def test_a_cluster_started_ahead_that_no_flow_takes_is_closed(prefect_server, counted_local_clusters):
    import flows.cluster as cluster_module

    cluster_module.prestart_cluster(None)  # None: the local profile, as the CLI's default
    cluster_module._PRESTARTED["local"][1].result(timeout=120)
    cluster_module.prestart_cluster("local")  # started once per profile
    assert len(counted_local_clusters) == 1
    cluster_module.close_prestarted()
    assert counted_local_clusters[0].status.name == "closed" and not cluster_module._PRESTARTED
    cluster_module.prestart_cluster("tcp://127.0.0.1:9")  # a running scheduler: nothing to start
    assert not cluster_module._PRESTARTED


def test_workers_load_ants_ahead_of_the_registration_steps(prefect_server):
    """The registration flow has every worker import ANTs at once, instead of each
    step paying for it on whichever worker it lands; off a Dask runner nothing happens."""
    import sys

    from distributed import Client, LocalCluster
    from prefect import flow

    from flows.cluster import run_on_workers, runner_for
    from scalereg.register.ants_image import load_ants

    @flow
    def warm() -> None:
        run_on_workers(load_ants)

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        def has_ants() -> bool:
            return "ants" in sys.modules

        assert not any(client.run(has_ants).values())
        warm.with_options(task_runner=runner_for(cluster.scheduler_address))()
        deadline = time.monotonic() + 120
        while not all(client.run(has_ants).values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(client.run(has_ants).values()) and len(client.run(has_ants)) == 2
    warm()  # the default thread-pool runner: a no-op, no error
