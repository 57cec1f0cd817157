"""Concurrency: the output lock (taken, refused naming its owner, stale by a dead process
or an old heartbeat, released; on disk and in a bucket), two runs aimed at one output
(the second refused with exit code 2 / a Failed state, the first unharmed) and four
runs with different outputs at once on one Prefect server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import parent_of, phantom
from scalereg.errors import BAD_INPUT_STATE, InputError
from scalereg.output_lock import STALE_ENVIRONMENT_VARIABLE, OutputLock

pytestmark = pytest.mark.integration

SPACING = ["2", "1", "1"]
SCALEREG = str(Path(sys.executable).parent / "scalereg")


def _ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat()


def _foreign_record(run: str, heartbeat_age: float, host: str = "another-host", pid: int = 4242) -> bytes:
    """A lock record written by a run elsewhere whose last heartbeat was ``heartbeat_age`` s ago."""
    record = {"output": "x", "run": run, "host": host, "pid": pid, "user": "someone", "started": _ago(heartbeat_age + 60),
              "heartbeat": _ago(heartbeat_age), "heartbeat_every": 60.0, "token": "t-" + run}  # fmt: skip
    return json.dumps(record).encode()


def _exited_pid() -> int:
    """The pid of a process of this host that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _race(out: str, contenders: int, **options) -> tuple[list[OutputLock], list[str], list[str]]:
    """``contenders`` threads take the lock of ``out`` at the same moment: (winners, refusals, warnings)."""
    start = threading.Barrier(contenders)
    winners, refusals, warnings = [], [], []

    def contend(index: int) -> None:
        lock = OutputLock(out, run=f"contender {index}", warn=warnings.append, **options)
        start.wait()
        try:
            winners.append(lock.acquire())
        except InputError as error:
            refusals.append(str(error))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners, refusals, warnings


# -- the lock on a local filesystem -------------------------------------------------


def test_lock_is_taken_beside_the_output_refused_naming_its_owner_and_released(tmp_path):
    out = tmp_path / "brain.ome.zarr"
    lock = tmp_path / "brain.ome.zarr.lock"
    with OutputLock(out, run="convert-volume 'first-run' (id-1)") as first:
        record = json.loads(lock.read_text())
        assert record == first.owner
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid() and record["user"]
        assert record["run"] == "convert-volume 'first-run' (id-1)" and record["started"] == record["heartbeat"]
        assert not out.exists(), "the lock is beside the output: nothing in it, nothing that looks like it"

        with pytest.raises(InputError) as refused:
            OutputLock(out, run="second").acquire()
        message = str(refused.value)
        assert message.startswith(f"{out}: is being written by run convert-volume 'first-run' (id-1)")
        for text in (f"host {socket.gethostname()}", f"pid {os.getpid()}", record["started"], "stale", f"remove {lock}"):
            assert text in message, text
        assert json.loads(lock.read_text())["token"] == record["token"], "a refused run leaves the lock alone"
    assert not lock.exists()
    with OutputLock(out, run="second") as second:  # free again
        assert json.loads(lock.read_text())["run"] == "second"
        assert second.owner["run"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_whose_process_died_is_taken_over_at_once(tmp_path):
    out = tmp_path / "brain.ome.zarr"
    code = "import sys, time\nfrom scalereg.output_lock import OutputLock\nOutputLock(sys.argv[1], run='doomed').acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"run doomed on host .* pid {holder.pid}"):
            OutputLock(out).acquire()  # alive: refused, even though it is this host
    finally:
        holder.kill()
        holder.wait()
    warnings: list[str] = []
    with OutputLock(out, run="next", warn=warnings.append):
        assert json.loads(Path(f"{out}.lock").read_text())["run"] == "next"
    assert len(warnings) == 1 and "took over the stale lock" in warnings[0]
    assert "run doomed" in warnings[0] and f"process {holder.pid} on this host is gone" in warnings[0]


def test_a_lock_is_stale_when_its_heartbeat_is_older_than_the_timeout(tmp_path, monkeypatch):
    out = tmp_path / "brain.ome.zarr"
    lock = Path(f"{out}.lock")
    lock.write_bytes(_foreign_record("busy", heartbeat_age=30))
    with pytest.raises(InputError, match="run busy on host another-host .pid 4242, user someone.*last heartbeat 30 s ago"):
        OutputLock(out).acquire()

    lock.write_bytes(_foreign_record("old", heartbeat_age=1200))
    monkeypatch.setenv(STALE_ENVIRONMENT_VARIABLE, "3600")  # the timeout is configurable: 20 minutes is not stale under it
    with pytest.raises(InputError, match=r"run old .*\(3600 s without a heartbeat"):
        OutputLock(out).acquire()
    monkeypatch.delenv(STALE_ENVIRONMENT_VARIABLE)  # the default, 600 s
    warnings: list[str] = []
    with OutputLock(out, run="new", warn=warnings.append):
        assert json.loads(lock.read_text())["run"] == "new"
    assert len(warnings) == 1 and "run old on host another-host" in warnings[0] and "no heartbeat for 1200 s" in warnings[0]

    # a record that cannot be read (a lock being created): its age is the file's
    lock.write_bytes(b"")
    with pytest.raises(InputError, match="a run on host \\?"):
        OutputLock(out).acquire()
    os.utime(lock, (time.time() - 1200, time.time() - 1200))
    OutputLock(out).acquire().release()
    assert not lock.exists()

    with pytest.raises(InputError, match=STALE_ENVIRONMENT_VARIABLE):
        monkeypatch.setenv(STALE_ENVIRONMENT_VARIABLE, "soon")
        OutputLock(out)


def test_the_heartbeat_keeps_a_lock_alive_and_a_silent_one_goes_stale(tmp_path, monkeypatch):
    out = tmp_path / "brain.ome.zarr"
    lock = Path(f"{out}.lock")
    holder = OutputLock(out, run="alive", stale_after=0.5).acquire()  # a heartbeat every 0.05 s
    first = json.loads(lock.read_text())
    time.sleep(1.2)  # more than twice the timeout
    beating = json.loads(lock.read_text())
    assert beating["token"] == first["token"] and beating["heartbeat"] > first["heartbeat"]
    # seen from another host only the heartbeat speaks for the holder: still not stale
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    with pytest.raises(InputError, match="run alive"):
        OutputLock(out, stale_after=0.5).acquire()

    holder._stop.set()  # the holder freezes (a hung process, a host cut off): no more heartbeats
    holder._beating.join()
    time.sleep(0.8)
    warnings: list[str] = []
    with OutputLock(out, run="taker", stale_after=0.5, warn=warnings.append):
        assert json.loads(lock.read_text())["run"] == "taker"
        left: list[str] = []
        holder._warn = left.append
        holder.release()  # the frozen run ends: it does not remove the taker's lock
        assert json.loads(lock.read_text())["run"] == "taker" and "no longer this run's" in left[0]
    assert len(warnings) == 1 and "run alive" in warnings[0] and "no heartbeat" in warnings[0]
    assert not lock.exists()


def test_of_runs_racing_for_a_lock_one_wins(tmp_path):
    out = str(tmp_path / "brain.ome.zarr")
    winners, refusals, _ = _race(out, 8)
    assert len(winners) == 1 and len(refusals) == 7
    assert all(winners[0].owner["run"] in message for message in refusals)
    winners[0].release()

    # racing to take over the same stale lock: one wins, one warning
    Path(f"{out}.lock").write_bytes(_foreign_record("old", heartbeat_age=1200))
    winners, refusals, warnings = _race(out, 8)
    assert len(winners) == 1 and len(refusals) == 7 and len(warnings) == 1
    assert all(winners[0].owner["run"] in message for message in refusals)
    winners[0].release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no lock and no takeover mutex is left"


# -- the lock in a bucket -------------------------------------------------------------


def test_lock_in_a_bucket(s3_env):
    server = s3_env
    client = server.client()
    out = f"s3://{server.bucket}/locks/brain.ome.zarr"

    def record() -> dict:
        return json.loads(client.get_object(Bucket=server.bucket, Key="locks/brain.ome.zarr.lock")["Body"].read())

    def keys() -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=server.bucket, Prefix="locks/").get("Contents", [])]

    with OutputLock(out, run="first", stale_after=0.5) as first:
        assert record()["token"] == first.owner["token"] and keys() == ["locks/brain.ome.zarr.lock"]
        with pytest.raises(InputError) as refused:
            OutputLock(out, run="second").acquire()
        message = str(refused.value)
        assert message.startswith(f"{out}: is being written by run first on host {socket.gethostname()} (pid {os.getpid()}")
        assert f"remove {out}.lock" in message
        time.sleep(0.3)
        assert record()["heartbeat"] > record()["started"], "the heartbeat is refreshed in the bucket too"
    assert keys() == []

    # stale: an old heartbeat, or a process of this host that has ended
    client.put_object(Bucket=server.bucket, Key="locks/brain.ome.zarr.lock", Body=_foreign_record("old", heartbeat_age=1200))
    warnings: list[str] = []
    with OutputLock(out, run="new", warn=warnings.append):
        assert record()["run"] == "new"
    assert "run old" in warnings[0] and "no heartbeat" in warnings[0]
    dead = json.loads(_foreign_record("dead", heartbeat_age=1, host=socket.gethostname(), pid=_exited_pid()))
    dead["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    client.put_object(Bucket=server.bucket, Key="locks/brain.ome.zarr.lock", Body=json.dumps(dead).encode())
    with OutputLock(out, run="new", warn=warnings.append):
        assert record()["run"] == "new"
    assert "run dead" in warnings[1] and "is gone" in warnings[1]
    assert keys() == []

    # conditional writes: of racing runs one wins, also over a stale lock
    winners, refusals, _ = _race(out, 4)
    assert len(winners) == 1 and len(refusals) == 3
    winners[0].release()
    client.put_object(Bucket=server.bucket, Key="locks/brain.ome.zarr.lock", Body=_foreign_record("old", heartbeat_age=1200))
    winners, refusals, warnings = _race(out, 4)
    assert len(winners) == 1 and len(refusals) == 3 and len(warnings) == 1
    winners[0].release()
    assert keys() == []


# -- two runs aimed at one output ----------------------------------------------------------


def _raw(tmp_path: Path, shape: tuple[int, int, int], seed: int = 0, name: str = "raw") -> tuple[np.ndarray, str]:
    volume = phantom(shape, "uint16", seed=seed)
    raw = tmp_path / f"{name}.zarr"
    zarr.save_array(str(raw), volume)
    return volume, str(raw)


def test_core_calls_from_python_hold_the_output_lock_too(tmp_path, mouse_registration):
    """scalereg's functions called from Python (no flow) take their output's lock as the
    flows do: a second writer is refused naming the first, whichever of them is a flow."""
    from scalereg.convert import convert_volume
    from scalereg.register import register_pyramids
    from scalereg.warp.warp_volume import warp_volume

    _, raw = _raw(tmp_path, (16, 16, 16))
    outputs = {name: tmp_path / name for name in ("brain.ome.zarr", "warped.ome.zarr", "transform")}
    calls = {
        "brain.ome.zarr": lambda: convert_volume(raw, str(outputs["brain.ome.zarr"]), spacing=(1, 1, 1)),
        "warped.ome.zarr": lambda: warp_volume(str(mouse_registration["transform"]), str(mouse_registration["moving"]), str(mouse_registration["fixed"]), str(outputs["warped.ome.zarr"])),
        "transform": lambda: register_pyramids(str(mouse_registration["fixed"]), str(mouse_registration["moving"]), str(outputs["transform"])),
    }
    for name, call in calls.items():
        held = OutputLock(str(outputs[name]), run="convert-volume 'first-run' (a flow)").acquire()
        try:
            with pytest.raises(InputError, match="is being written by run convert-volume 'first-run'"):
                call()
        finally:
            held.release()
        assert not outputs[name].exists(), f"{name}: a refused call wrote nothing"
    calls["brain.ome.zarr"]()  # once the lock is free the call writes, and lets its lock go
    assert not Path(f"{outputs['brain.ome.zarr']}.lock").exists()


def test_a_run_aimed_at_an_output_being_written_is_refused_and_the_output_left_alone(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.convert_volume import convert_volume
    from flows.register_brain import register_brain
    from scalereg.omezarr import validate_pyramid

    volume, raw = _raw(tmp_path, (24, 32, 32))
    out = tmp_path / "brain.ome.zarr"
    options = dict(source=raw, output=str(out), spacing=[2.0, 1.0, 1.0], chunks=16)
    with OutputLock(out, run="the first run"):  # a run writing the output, as far as anyone can tell
        state = convert_volume(**options, return_state=True)
        assert state.is_failed() and state.name == BAD_INPUT_STATE
        assert "is being written by run the first run" in state.message and f"remove {out}.lock" in state.message
        assert not out.exists()

        command = subprocess.run(
            [SCALEREG, "convert", raw, str(out), "--spacing", *SPACING, "--chunks", "16"],
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert command.returncode == 2 and "Traceback" not in command.stderr, command.stderr
        last = command.stderr.strip().splitlines()[-1]
        assert last.startswith(f"scalereg: error: {out}: is being written by run the first run on host"), last
        assert not out.exists()

    # register-brain locks its directory and each stage output in it
    brain = tmp_path / "brainrun"
    with OutputLock(brain / "transform", run="a register-volume run"):
        state = register_brain(fixed=raw, moving=raw, out=str(brain), return_state=True)
        assert state.is_failed() and state.name == BAD_INPUT_STATE
        assert state.message.startswith(f"{brain / 'transform'}: is being written by run a register-volume run")
        assert sorted(p.name for p in brain.iterdir()) == ["transform.lock"], "the locks it took are released"
    assert not (tmp_path / "brainrun.lock").exists()

    result = convert_volume(**options)  # free again
    assert result["state"] == "new" and validate_pyramid(str(out)) == []
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)
    assert not Path(f"{out}.lock").exists()


def test_two_flow_runs_at_one_output_the_second_is_refused_the_first_completes(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.convert_volume import convert_volume
    from scalereg.omezarr import validate_pyramid

    volume, raw = _raw(tmp_path, (32, 48, 48))
    out = tmp_path / "brain.ome.zarr"
    lock = Path(f"{out}.lock")
    first = subprocess.Popen(
        [SCALEREG, "convert", raw, str(out), "--spacing", *SPACING, "--chunks", "16", "--memory-budget", "256KiB"],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), f"the first run did not take its lock: {first.poll()} {first.stderr.read() if first.poll() is not None else ''}"
        owner = json.loads(lock.read_text())
        # the CLI runs the command in a child of its own (scalereg.cli._supervise): that process holds the lock
        assert parent_of(owner["pid"]) == first.pid and owner["run"].startswith("convert-volume '")

        second = convert_volume(source=raw, output=str(out), spacing=[2.0, 1.0, 1.0], chunks=32, overwrite=True, return_state=True)
        assert second.is_failed() and second.name == BAD_INPUT_STATE
        assert f"is being written by run {owner['run']} on host {owner['host']} (pid {owner['pid']}" in second.message
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr[-3000:]
    assert f"wrote {out} (new)" in stdout
    assert validate_pyramid(str(out)) == []
    assert zarr.open_array(str(out / "0")).chunks == (16, 16, 16), "the output is the first run's, untouched by the second"
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)
    assert not lock.exists()


# -- four runs with different outputs at once ----------------------------------------------


def _hold_worker(gate: str) -> bool:
    """Occupy this worker's one thread until the test opens ``gate``."""
    from distributed import Event

    return Event(gate).wait(timeout=300)


def _wait_until_running(outputs: list[Path], runs: list[subprocess.Popen], timeout: float = 300) -> None:
    """Wait until the block subflow (convert-volume-blocks) of each output is running on the
    Prefect server: its tasks are then queued behind the held workers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    wanted = {str(output) for output in outputs}
    running: set[str] = set()
    end = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while running != wanted:
            assert time.monotonic() < end, f"only {sorted(running)} of {sorted(wanted)} started in {timeout} s"
            ended = [run.args[3] for run in runs if run.poll() is not None]
            assert not ended, f"runs ended while the workers were held: {ended}"
            flow_runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["convert-volume-blocks"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
            )
            running = {run.parameters.get("output") for run in flow_runs} & wanted
            time.sleep(0.5)


def test_four_runs_with_different_outputs_at_once_on_one_server(prefect_server, tmp_path, monkeypatch):
    from distributed import Client, Event, LocalCluster
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL

    from scalereg.convert import convert_volume
    from scalereg.omezarr import read_pyramid, validate_pyramid
    from scalereg.omezarr.create_pyramid_store import STATUS_KEY

    shapes = [(40, 48, 56), (48, 56, 40), (56, 40, 48), (32, 64, 48)]
    names = [f"brain{index}" for index in range(len(shapes))]
    sources = [_raw(tmp_path, shape, seed=index, name=f"raw{index}") for index, shape in enumerate(shapes)]
    outputs = [tmp_path / "runs" / f"{name}.ome.zarr" for name in names]
    url = PREFECT_API_URL.value()
    monkeypatch.setenv("PREFECT_API_URL", url)  # the shared workers report task runs to the same server
    # one Dask cluster that all four runs use: their tasks share the same worker processes
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as gatekeeper:
        # a gate: both workers are held until all four flow runs are running, so that their
        # block tasks queue together and the runs overlap however late each process starts
        gate = Event("four-runs-gate", client=gatekeeper)
        held = [gatekeeper.submit(_hold_worker, "four-runs-gate", workers=[worker], pure=False) for worker in cluster.scheduler_info["workers"]]
        runs = [
            subprocess.Popen(
                [SCALEREG, "convert", raw, str(output), "--spacing", *SPACING, "--chunks", "16", "--memory-budget", "256KiB",
                 "--cluster", cluster.scheduler_address],
                env={**os.environ, "PREFECT_API_URL": url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            for (_, raw), output in zip(sources, outputs)
        ]
        try:
            _wait_until_running(outputs, runs)
        finally:
            gate.set()
        assert all(hold.result(timeout=60) for hold in held)  # the gate held both workers until then
        results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [stderr[-2000:] for _, stderr in results]

    spans = []  # when each run wrote its blocks
    with get_client(sync_client=True) as client:
        for name, shape, (volume, raw), output in zip(names, shapes, sources, outputs):
            assert validate_pyramid(str(output)) == [], name
            assert np.array_equal(zarr.open_array(str(output / "0"))[:], volume), name
            # the same conversion run alone, without Prefect: the same levels, voxel for voxel
            alone = tmp_path / "alone" / f"{name}.ome.zarr"
            convert_volume(raw, str(alone), spacing=[2.0, 1.0, 1.0], chunks=16)
            layout = read_pyramid(str(output))
            assert len(layout.levels) == len(read_pyramid(str(alone)).levels)
            for level in layout.levels:
                assert np.array_equal(zarr.open_array(str(output / level.path))[:], zarr.open_array(str(alone / level.path))[:]), (name, level.path)
            manifests = [zarr.open_group(str(p), mode="r").attrs[STATUS_KEY]["manifest"] for p in (output, alone)]
            assert [lv["checksum"] for lv in manifests[0]["levels"]] == [lv["checksum"] for lv in manifests[1]["levels"]]

            # its artifacts: keyed by its output's name, from one flow run that wrote this output
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"{name}-")))
            assert {a.key for a in artifacts} >= {f"{name}-level-{level.path}" for level in layout.levels} | {f"{name}-report", f"{name}-progress"}
            assert len({a.flow_run_id for a in artifacts}) == 1, name
            run = client.read_flow_run(artifacts[0].flow_run_id)
            assert run.parameters["output"] == str(output)
            spans.append((run.start_time, run.end_time))
            table = next(a for a in artifacts if a.key == f"{name}-level-0")
            assert " x ".join(map(str, shape)) in str(table.data)
    # they did run at once: every block subflow was running when the gate opened
    overlapping = [any(a < end and start < b for j, (a, b) in enumerate(spans) if j != i) for i, (start, end) in enumerate(spans)]
    assert all(overlapping), f"some run did not overlap another: {spans}"
    assert not list((tmp_path / "runs").glob("*.lock"))
