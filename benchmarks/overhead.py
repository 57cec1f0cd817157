#!/usr/bin/env python
"""Benchmark: what orchestration costs.  The whole register-brain flow vs the same core
functions called directly, on the same 1 GiB pair, in the same run.

Data: the sample mouse brain (255 x 217 x 170, 50 um, 'psl') upsampled x2.6 per axis
(663 x 564 x 442 float32 = 0.62 GiB, 19.2 um) as the fixed volume, and a copy moved
by a known affine and smooth warp (made with scalereg's own tiled warp) as the moving
one: 1.24 GiB together, both plain Zarr arrays that each run converts.

Rows, each in its own subprocess started from nothing:

  core            scalereg's core functions in one process: convert_volume for fixed
                  and moving (ProcessPoolExecutor, 2 forkserver workers),
                  register_pyramids (in process), warp_volume (the same pool)
  flow            `scalereg run ...`: the register-brain Prefect flow as the CLI runs
                  it (one LocalCluster of 2 workers x 1 thread for the whole run,
                  stage flows and tasks, artifacts, Prefect's temporary server that
                  the run starts itself)
  flow, running   the same against a Prefect server that is already running, as a
  server         deployment has (started before the row, not timed)

Every row writes the same outputs (both pyramids, the transform directory, the warped
pyramid) with the same schedule, chunks and memory budgets (the flow's "auto" budgets
equal the core's defaults on this machine, except registration's, given explicitly);
ITK uses both cores in every row.  The floor (issue 5): a flow row adds at most 15% wall time to the core row.

    python benchmarks/overhead.py [--zoom 2.6] [--workdir DIR] [--only ROWS]

Prints a Markdown table and writes it to benchmarks/results/overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from _shared import GIB, measure, start_server, streamed_ncc, upsampled_sample_mouse

HERE = Path(__file__).resolve().parent
WORKERS = 2
CHUNK = 128
ROWS = ("core", "flow", "flow-server")
FLOOR = 0.15
# The same in every row (the flow's "auto" would follow the workers' memory, which can
# admit a level the core's default refuses: then the rows would not do the same work).
REGISTRATION_BUDGET = "8GiB"
SCHEDULE = {
    "name": "benchmark-mouse",
    "steps": [
        {"spacing": 200, "transform": "rigid", "iterations": [300, 100], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "affine", "iterations": [300, 100], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "syn", "metric": "mattes", "iterations": [40, 20], "shrink_factors": [2, 1],
         "smoothing_sigmas": [1, 0], "gradient_step": 0.25},
    ],
}  # fmt: skip


# --------------------------------------------------------------------------- children


def _pool():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fresh worker processes (as Dask's), not forks that start with the driver's memory
    return ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver"))


def prepare(workdir: Path, zoom: float) -> None:
    """fixed.zarr (the upsampled mouse) and moving.zarr (it, moved by a known transform)."""
    import zarr

    from scalereg.convert import convert_volume
    from scalereg.geometry import Geometry
    from scalereg.register.ants_image import to_ants_image
    from scalereg.synthetic import make_deformation
    from scalereg.warp import warp_volume

    info_path = workdir / "prepared.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("zoom") == zoom:
        return
    source, volume, spacing, mouse = upsampled_sample_mouse(zoom)
    for name in ("fixed.zarr", "moving.zarr", "prep"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    zarr.create_array(str(workdir / "fixed.zarr"), data=volume, chunks=(CHUNK,) * 3)
    del volume
    prep = workdir / "prep"
    geometry = {"spacing": spacing, "orientation": mouse.orientation, "chunks": CHUNK}
    with _pool() as pool:
        convert_volume(str(workdir / "fixed.zarr"), str(prep / "fixed.ome.zarr"), executor=pool, **geometry)
        coarse = to_ants_image(source, Geometry(spacing=(50.0, 50.0, 50.0), orientation=mouse.orientation))
        truth = make_deformation(coarse, prep / "truth", rotation_degrees=6, shift_um=300, warp_um=150)
        moved = prep / "moved.ome.zarr"
        warp_volume(truth.forward, str(prep / "fixed.ome.zarr"), str(prep / "fixed.ome.zarr"), str(moved), executor=pool)
    level0 = zarr.open_array(str(moved / "0"))
    moving = zarr.create_array(str(workdir / "moving.zarr"), shape=level0.shape, dtype=level0.dtype, chunks=(CHUNK,) * 3)
    for z in range(0, level0.shape[0], CHUNK):
        moving[z : z + CHUNK] = level0[z : z + CHUNK]
    (workdir / "schedule.json").write_text(json.dumps(SCHEDULE))
    info = {"zoom": zoom, "shape": list(level0.shape), "bytes": int(2 * level0.nbytes), "spacing_um": spacing, "orientation": mouse.orientation}
    info_path.write_text(json.dumps(info, indent=2))


def child_core(workdir: Path) -> None:
    """The pipeline's stages as plain function calls; prints each stage's seconds."""
    from scalereg.convert import convert_volume
    from scalereg.register import register_pyramids
    from scalereg.warp import warp_volume

    info = json.loads((workdir / "prepared.json").read_text())
    out = workdir / "out-core"
    shutil.rmtree(out, ignore_errors=True)
    geometry = {"spacing": info["spacing_um"], "orientation": info["orientation"], "chunks": CHUNK}
    seconds = {}
    start = time.perf_counter()
    with _pool() as pool:
        for role in ("fixed", "moving"):
            convert_volume(str(workdir / f"{role}.zarr"), str(out / f"{role}.ome.zarr"), executor=pool, **geometry)
            seconds[f"convert {role}"] = time.perf_counter() - start
        register_pyramids(
            str(out / "fixed.ome.zarr"), str(out / "moving.ome.zarr"), str(out / "transform"),
            schedule=str(workdir / "schedule.json"), memory_budget=REGISTRATION_BUDGET,
        )  # fmt: skip
        seconds["register"] = time.perf_counter() - start
        warp_volume([str(out / "transform")], str(out / "moving.ome.zarr"), str(out / "fixed.ome.zarr"), str(out / "warped.ome.zarr"), executor=pool)
        seconds["warp"] = time.perf_counter() - start
    print("STAGES " + json.dumps(seconds), flush=True)


def flow_command(workdir: Path, info: dict, out: Path) -> list[str]:
    spacing = [str(s) for s in info["spacing_um"]]
    return [
        sys.executable, "-m", "scalereg.cli", "run", "--fixed", str(workdir / "fixed.zarr"), "--moving", str(workdir / "moving.zarr"),
        "--fixed-spacing", *spacing, "--fixed-orientation", info["orientation"],
        "--moving-spacing", *spacing, "--moving-orientation", info["orientation"],
        "--schedule", str(workdir / "schedule.json"), "--memory-budget", REGISTRATION_BUDGET, "--chunks", str(CHUNK), "--out", str(out),
    ]  # fmt: skip


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process and its children have used so far."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        times = process.cpu_times()
        total += times.user + times.system
    return total


def compare(workdir: Path, rows: list[str]) -> dict:
    """NCC of each row's warped level 0 with the fixed volume (all rows should agree)."""
    import zarr

    fixed = zarr.open_array(str(workdir / "fixed.zarr"))
    return {row: streamed_ncc(fixed, zarr.open_array(str(workdir / f"out-{row}" / "warped.ome.zarr" / "0")), CHUNK)[0] for row in rows}


def flow_stage_seconds(api_url: str) -> dict[str, float]:
    """Seconds of each stage flow of the newest register-brain run on the server at
    ``api_url`` (the flow's own account of where its time went)."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        # newest first: the default order (by id) is not by time, and a limit then drops stages at random
        runs = client.read_flow_runs(limit=50, sort=FlowRunSort.START_TIME_DESC)
        names = {run.flow_id: client.read_flow(run.flow_id).name for run in runs}
        top = max((r for r in runs if names[r.flow_id] == "register-brain" and r.start_time), key=lambda r: r.start_time)
        stages = sorted((r for r in runs if r.parent_task_run_id and r.start_time and r.start_time >= top.start_time and r.end_time), key=lambda r: r.start_time)
        seconds = {f"{names[r.flow_id]} ({r.name})": (r.end_time - r.start_time).total_seconds() for r in stages}
        conversions = [r for r in stages if names[r.flow_id].startswith("convert-")]
        if len(conversions) > 1:  # they run side by side: the time they took together
            seconds["conversions, first start to last end"] = (max(r.end_time for r in conversions) - min(r.start_time for r in conversions)).total_seconds()
        seconds["register-brain, whole"] = (top.end_time - top.start_time).total_seconds()
    return seconds


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoom", type=float, default=2.6, help="per-axis upsampling of the 50 um sample brain (default 2.6: 0.62 GiB per volume)")
    parser.add_argument("--workdir", default=str(HERE / "data" / "overhead"))
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run (default all: {','.join(ROWS)})")
    parser.add_argument("--results", default=str(HERE / "results" / "overhead.md"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of every row, round-robin (rows drift with the machine): the best wall time is compared, the median and max are shown")
    parser.add_argument("_child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    if args._child:
        {"prepare": lambda: prepare(workdir, args.zoom), "core": lambda: child_core(workdir)}[args._child[0]]()
        return
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(WORKERS)}
    me = [sys.executable, __file__, "--workdir", str(workdir), "--zoom", str(args.zoom)]
    started = time.perf_counter()
    measure([*me, "prepare"], workdir / "prepare.log", env)
    info = json.loads((workdir / "prepared.json").read_text())
    chosen = [r for r in ROWS if r in args.only.split(",")]
    runs: dict[str, list[dict]] = {row: [] for row in chosen}
    server = start_server(workdir, env) if "flow-server" in chosen else None
    try:
        for attempt in range(1, args.repeat + 1):
            for row in chosen:
                out = workdir / f"out-{row}"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                print(f"running {row} ({attempt}/{args.repeat}) ...", flush=True)
                row_env = dict(env)
                if row == "flow-server":
                    row_env["PREFECT_API_URL"] = server.api_url
                command = [*me, "core"] if row == "core" else flow_command(workdir, info, out)
                server_cpu = _tree_cpu(server.pid) if row == "flow-server" else 0.0
                result = measure(command, workdir / f"{row}.log", row_env)
                if row == "flow-server":  # the running server is not in the row's process tree
                    result["cpu"]["prefect server"] = _tree_cpu(server.pid) - server_cpu
                runs[row].append(result)
                print(f"  {result['seconds']:.1f} s, tree peak {result['tree_peak'] / GIB:.2f} GiB", flush=True)
        results = {row: min(measured, key=lambda r: r["seconds"]) for row, measured in runs.items()}
        for row, measured in runs.items():
            results[row]["all_seconds"] = sorted(r["seconds"] for r in measured)
        flow_stages = flow_stage_seconds(server.api_url) if server is not None else {}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    stages = {}
    if "core" in results:
        line = next(l for l in (workdir / "core.log").read_text().splitlines() if l.startswith("STAGES "))
        stages = json.loads(line[len("STAGES "):])
    text = report(args, info, results, stages, flow_stages, compare(workdir, list(results)), time.perf_counter() - started)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)


def _schedule_text() -> str:
    return ", ".join(f"{step['transform']} {step['spacing']} um" for step in SCHEDULE["steps"])


def report(args, info: dict, results: dict, stages: dict, flow_stages: dict, scores: dict, total: float) -> str:
    import psutil
    from importlib.metadata import version

    labels = {
        "core": "core functions (2-process pool; registration in process)",
        "flow": "register-brain flow (`scalereg run`, LocalCluster 2x1, temporary server)",
        "flow-server": "register-brain flow (`scalereg run`, LocalCluster 2x1, running server)",
    }
    lines = [
        "# Orchestration overhead benchmark",
        "",
        f"Command: `python benchmarks/overhead.py --zoom {args.zoom} --repeat {args.repeat}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, whole run {total:.0f} s)",
        f"Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.1f} GiB, python {platform.python_version()}, "
        + ", ".join(f"{name} {version(name)}" for name in ("prefect", "prefect-dask", "dask", "antspyx", "zarr")),
        f"Data: fixed = sample mouse brain x{args.zoom} per axis, {' x '.join(map(str, info['shape']))} float32 "
        f"({info['spacing_um'][0]:.1f} um), moving = a copy moved by a known affine + smooth warp; {info['bytes'] / GIB:.2f} GiB together. "
        f"Schedule: {_schedule_text()}",
        "",
        "| run | wall (s) | vs core | CPU s: driver / workers / server / other | peak RSS, tree (GiB) | largest worker (GiB) | NCC warped vs fixed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    core = results.get("core")
    for row, r in results.items():
        ratio = f"{r['seconds'] / core['seconds'] - 1:+.1%}" if core and row != "core" else "-"
        cpu = " / ".join(f"{r['cpu'].get(role, 0.0):.0f}" for role in ("driver", "worker", "prefect server", "other"))
        wall = f"{r['seconds']:.1f}"
        if len(r["all_seconds"]) > 1:
            wall += f" ({statistics.median(r['all_seconds']):.1f}, {max(r['all_seconds']):.1f})"
        lines.append(f"| {labels[row]} | {wall} | {ratio} | {cpu} | {r['tree_peak'] / GIB:.2f} | {r['worker_peak'] / GIB:.2f} | {scores.get(row, float('nan')):.4f} |")
    if args.repeat > 1:
        lines += ["", f"Wall: the best of {args.repeat} runs per row, round-robin (median, max in brackets); the other columns are the best run's."]
    if stages:
        previous = 0.0
        parts = []
        for name, at in stages.items():
            parts.append(f"{name} {at - previous:.1f} s")
            previous = at
        lines += ["", f"Core stages (inside the core row's process, after start-up): {', '.join(parts)}."]
    if flow_stages:
        text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in flow_stages.items())
        lines += ["", f"Flow stages (the running-server row's flow runs, from the server): {text}."]
    if core:
        lines += ["", f"Floor (issue 5): orchestration adds at most {FLOOR:.0%} wall time:"]
        for row in ("flow", "flow-server"):
            if row in results:
                added = results[row]["seconds"] / core["seconds"] - 1
                median = statistics.median(results[row]["all_seconds"]) / statistics.median(core["all_seconds"]) - 1
                medians = f"; medians {median:+.1%}" if args.repeat > 1 else ""
                lines.append(f"- {labels[row]}: **{'PASS' if added <= FLOOR else 'FAIL'}** ({added:+.1%}, best against best{medians})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
