#!/usr/bin/env python
"""Benchmark: tiled warp of a >= 0.5 GiB brain volume vs ants.apply_transforms, same run.

Data: the sample mouse brain (255 x 217 x 170, 50 um, 'psl') upsampled x2.6 per axis
by trilinear interpolation (663 x 564 x 442 = 165 Mvox float32 = 0.62 GiB, 19.2 um),
as an OME-Zarr pyramid (128^3 chunks).  Transform: a known affine (rotation, scale,
shift) and a smooth displacement field on the 50 um grid (`scalereg.synthetic`), as
ANTs files, the way a registration found at coarse resolution hands them over.  The
volume is warped onto its own grid (reference = moving).

Rows, each in its own subprocess (so its memory is measured alone; RSS of the whole
process tree and of each process sampled every 0.1 s with psutil):

  scalereg flow    `scalereg warp --transform W --transform A ...`: the warp-volume
                   Prefect flow as the CLI runs it (LocalCluster, 2 workers x 1 thread,
                   Prefect's temporary server, started by the run); writes the output
                   pyramid (all levels)
  scalereg flow,   the same against a Prefect server that is already running (as in a
  running server   deployment: `prefect server start`, started before the row is timed)
  scalereg core    `scalereg.warp.warp_volume(..., executor=ProcessPoolExecutor(2))`
                   (forkserver workers)
  ants             read the volume, `ants.apply_transforms(fixed, moving, [W, A])`
                   (linear), write the result as one zarr array (level 0 only)
  ants single      the same with `singleprecision=True`

ITK in the ants rows uses both cores (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2).
The outputs are compared: NCC and max |difference| of scalereg's level 0 vs ANTs'.

    python benchmarks/warp.py [--zoom 2.6] [--workdir DIR] [--only ROWS]

Prints a Markdown table and writes it to benchmarks/results/warp.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from _shared import GIB, measure, start_server, streamed_ncc, upsampled_sample_mouse

HERE = Path(__file__).resolve().parent
WORKERS = 2
CHUNK = 128
ROWS = ("scalereg-flow", "scalereg-flow-server", "scalereg-core", "ants", "ants-single")


# --------------------------------------------------------------------------- children


def prepare(workdir: Path, zoom: float) -> None:
    import zarr

    from scalereg.convert import convert_volume
    from scalereg.geometry import Geometry
    from scalereg.register.ants_image import to_ants_image
    from scalereg.synthetic import make_deformation

    info_path = workdir / "prepared.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("zoom") == zoom:
        return
    source, volume, spacing, mouse = upsampled_sample_mouse(zoom)
    shutil.rmtree(workdir / "input.zarr", ignore_errors=True)
    zarr.create_array(str(workdir / "input.zarr"), data=volume, chunks=(CHUNK,) * 3)
    moving = workdir / "moving.ome.zarr"
    # voxel centres of the upsampled grid sit where the 50 um grid's edges say
    origin = tuple(-25.0 + s / 2 for s in spacing)
    convert_volume(str(workdir / "input.zarr"), str(moving), spacing=spacing, origin=origin, orientation=mouse.orientation, chunks=CHUNK, memory_budget="512MiB", overwrite=True)
    coarse = to_ants_image(source, Geometry(spacing=(50.0, 50.0, 50.0), orientation=mouse.orientation))
    truth = make_deformation(coarse, workdir / "truth", rotation_degrees=6, shift_um=300, warp_um=150)
    info = {"zoom": zoom, "shape": list(volume.shape), "bytes": int(volume.nbytes), "spacing_um": list(spacing), "moving": str(moving), "forward": truth.forward}
    info_path.write_text(json.dumps(info, indent=2))


def child_scalereg_core(workdir: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from scalereg.warp import warp_volume

    info = json.loads((workdir / "prepared.json").read_text())
    # fresh worker processes (as Dask's), not forks that start with the driver's memory
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("forkserver")) as pool:
        warp_volume(info["forward"], info["moving"], info["moving"], str(workdir / "out-scalereg-core.ome.zarr"), executor=pool, overwrite=True)


def child_ants(workdir: Path, single: bool) -> None:
    import zarr

    from scalereg.omezarr import read_pyramid
    from scalereg.register.ants_image import ants, from_ants_image, to_ants_image

    info = json.loads((workdir / "prepared.json").read_text())
    layout = read_pyramid(info["moving"])
    start = time.perf_counter()
    image = to_ants_image(zarr.open_array(info["moving"] + "/0")[:], layout.geometry)
    read = time.perf_counter()
    warped = ants.apply_transforms(image, image, info["forward"], interpolator="linear", singleprecision=single)
    applied = time.perf_counter()
    out = workdir / f"out-ants{'-single' if single else ''}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    zarr.create_array(str(out), data=from_ants_image(warped), chunks=(CHUNK,) * 3)
    print(f"read {read - start:.1f} s, apply_transforms {applied - read:.1f} s, write {time.perf_counter() - applied:.1f} s", flush=True)


def compare(workdir: Path) -> None:
    """NCC and max |difference| of each scalereg output's level 0 against ANTs'."""
    import zarr

    reference = zarr.open_array(str(workdir / "out-ants-single.zarr"))
    value_range = float(reference[:].max())
    results = {}
    for row in ("scalereg-flow", "scalereg-flow-server", "scalereg-core", "ants"):
        path = workdir / (f"out-{row}.ome.zarr/0" if row.startswith("scalereg") else "out-ants.zarr")
        if not path.exists():
            continue
        ncc, worst = streamed_ncc(reference, zarr.open_array(str(path)), CHUNK)
        results[row] = {"ncc": ncc, "max_abs_diff": worst, "range": value_range}
    (workdir / "compare.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoom", type=float, default=2.6, help="per-axis upsampling of the 50 um sample brain (default 2.6: 0.62 GiB)")
    parser.add_argument("--workdir", default=str(HERE / "data" / "warp"))
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run (default all: {','.join(ROWS)})")
    parser.add_argument("--results", default=str(HERE / "results" / "warp.md"))
    parser.add_argument("_child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    if args._child:
        name = args._child[0]
        {
            "prepare": lambda: prepare(workdir, args.zoom),
            "scalereg-core": lambda: child_scalereg_core(workdir),
            "ants": lambda: child_ants(workdir, single=False),
            "ants-single": lambda: child_ants(workdir, single=True),
            "compare": lambda: compare(workdir),
        }[name]()
        return
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(WORKERS)}
    me = [sys.executable, __file__, "--workdir", str(workdir), "--zoom", str(args.zoom)]
    started = time.perf_counter()
    measure([*me, "prepare"], workdir / "prepare.log", env)
    info = json.loads((workdir / "prepared.json").read_text())
    commands = {
        "scalereg-flow": [sys.executable, "-m", "scalereg.cli", "warp", "--moving", info["moving"], "--reference", info["moving"],
                          "--out", str(workdir / "out-scalereg-flow.ome.zarr"), "--overwrite",
                          *[a for t in info["forward"] for a in ("--transform", t)]],
        "scalereg-core": [*me, "scalereg-core"],
        "ants": [*me, "ants"],
        "ants-single": [*me, "ants-single"],
    }  # fmt: skip
    commands["scalereg-flow-server"] = [a if a != str(workdir / "out-scalereg-flow.ome.zarr") else str(workdir / "out-scalereg-flow-server.ome.zarr") for a in commands["scalereg-flow"]]
    chosen = [r for r in ROWS if r in args.only.split(",")]
    results = {}
    server = start_server(workdir, env) if "scalereg-flow-server" in chosen else None
    try:
        for row in chosen:
            os.sync()
            print(f"running {row} ...", flush=True)
            row_env = {**env, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"} if row.startswith("scalereg") else env
            if row == "scalereg-flow-server":
                row_env["PREFECT_API_URL"] = server.api_url
            results[row] = measure(commands[row], workdir / f"{row}.log", row_env)
            print(f"  {results[row]['seconds']:.1f} s, tree peak {results[row]['tree_peak'] / GIB:.2f} GiB", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    if "ants-single" in chosen:
        measure([*me, "compare"], workdir / "compare.log", env)
    comparison = json.loads((workdir / "compare.json").read_text()) if (workdir / "compare.json").exists() else {}
    text = report(args, info, results, comparison, time.perf_counter() - started)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)


def report(args, info: dict, results: dict, comparison: dict, total: float) -> str:
    import psutil

    versions = {}
    for name in ("antspyx", "numpy", "scipy", "zarr", "prefect", "dask"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "?"
    labels = {
        "scalereg-flow": "scalereg warp (flow, LocalCluster 2x1, temporary server)",
        "scalereg-flow-server": "scalereg warp (flow, LocalCluster 2x1, running server)",
        "scalereg-core": "scalereg core (2 processes)",
        "ants": "ants.apply_transforms",
        "ants-single": "ants.apply_transforms(singleprecision=True)",
    }
    lines = [
        "# Warp benchmark",
        "",
        f"Command: `python benchmarks/warp.py --zoom {args.zoom}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, whole run {total:.0f} s)",
        f"Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.1f} GiB, python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"Data: sample mouse brain x{args.zoom} per axis, {' x '.join(map(str, info['shape']))} float32 = {info['bytes'] / GIB:.2f} GiB "
        f"({info['spacing_um'][0]:.1f} um); affine + smooth displacement field on the 50 um grid (ANTs files); linear interpolation",
        "",
        "| run | wall (s) | peak RSS, tree (GiB) | largest worker (GiB) | driver (GiB) | NCC vs ANTs single | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row, r in results.items():
        c = comparison.get(row, {})
        worker = r["worker_peak"] if row.startswith("scalereg") else r["driver_peak"]
        lines.append(
            f"| {labels[row]} | {r['seconds']:.1f} | {r['tree_peak'] / GIB:.2f} | {worker / GIB:.2f} | {r['driver_peak'] / GIB:.2f} | "
            + (f"{c['ncc']:.6f} | {c['max_abs_diff']:.3g} (range {c['range']:.0f})" if c else "reference | -")
            + " |"
        )
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    for reference in ("ants", "ants-single"):
        if reference not in results:
            continue
        base = results[reference]
        lines += ["", f"Floors (issue 4) against {labels[reference]}: no slower, and peak RSS per worker at most 20% of its peak:"]
        for row in ("scalereg-flow", "scalereg-flow-server", "scalereg-core"):
            if row in results:
                r = results[row]
                lines.append(
                    f"- {labels[row]}: time **{verdict(r['seconds'] <= base['seconds'])}** ({r['seconds'] / base['seconds']:.2f}x), "
                    f"memory **{verdict(r['worker_peak'] <= 0.2 * base['driver_peak'])}** ({r['worker_peak'] / base['driver_peak']:.1%})"
                )
    lines += ["", "ANTs rows' own split (from their logs): " + "; ".join(
        f"{row}: {(Path(args.workdir) / f'{row}.log').read_text().strip().splitlines()[-1]}" for row in results if row.startswith("ants")
    )]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
