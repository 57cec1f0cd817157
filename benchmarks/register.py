"""Coarse-to-fine scalereg vs single-shot ants.registration(SyN), same data, same run.

Data: the MNI152 human template (1 mm, 197 x 233 x 189, from the nilearn wheel) with
its grey/white matter maps, and a copy moved by a known affine plus a smooth warp
(`scalereg.synthetic`).  Both registrations map the moving copy back; the score is
the Dice of the grey and white matter labels carried back with each result.

Each registration runs in its own subprocess; its wall time and peak RSS (from
wait4, the kernel's count for that process) are reported.  The parent stays small
(data preparation runs in a subprocess too): a child's peak RSS starts from its
parent's at fork and survives exec, so a large parent would inflate every row.

    python benchmarks/register.py [--workdir DIR] [--schedule FILE]

prints a Markdown table and writes it to benchmarks/results/register.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEDULE = {
    "name": "benchmark-human",
    "steps": [
        {"spacing": 4000, "transform": "rigid", "iterations": [500, 250], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 4000, "transform": "affine", "iterations": [500, 250], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 4000, "transform": "syn", "metric": "mattes", "iterations": [80, 60], "shrink_factors": [2, 1],
         "smoothing_sigmas": [1, 0], "gradient_step": 0.25},
        {"spacing": 2000, "transform": "syn", "metric": "mattes", "iterations": [8], "shrink_factors": [1],
         "smoothing_sigmas": [0], "gradient_step": 0.25},
    ],
}  # fmt: skip


def prepare(workdir: Path) -> dict:
    """Fixed and moving pyramids, labels, and the true transform (cached in workdir)."""
    import nibabel as nib
    import numpy as np
    import zarr

    from scalereg.convert import convert_volume
    from scalereg.omezarr import read_pyramid
    from scalereg.register.ants_image import to_ants_image
    from scalereg.sample_data import fetch_sample_data
    from scalereg.synthetic import deform, make_deformation

    done = workdir / "prepared.json"
    if done.exists():
        return json.loads(done.read_text())
    mni = fetch_sample_data(["mni152"])["mni152"]
    fixed = workdir / "fixed.ome.zarr"
    convert_volume(str(mni.path), str(fixed), chunks=64, overwrite=True)
    geometry = read_pyramid(str(fixed)).geometry
    t1 = zarr.open_array(str(fixed / "0"))[:]
    labels = np.zeros(t1.shape, np.uint8)
    labels[np.asarray(nib.load(mni.extra["gm"]).dataobj).transpose(2, 1, 0) > 127] = 1
    labels[np.asarray(nib.load(mni.extra["wm"]).dataobj).transpose(2, 1, 0) > 127] = 2
    truth = make_deformation(to_ants_image(t1, geometry), workdir / "truth", rotation_degrees=8, scale=1.06, shift_um=6000, warp_um=3000, wavelength_um=60000, seed=3)
    zarr.save_array(str(workdir / "moving.zarr"), deform(t1, geometry, truth))
    zarr.save_array(str(workdir / "labels.zarr"), labels)
    zarr.save_array(str(workdir / "moving_labels.zarr"), deform(labels, geometry, truth, labels=True))
    moving = workdir / "moving.ome.zarr"
    convert_volume(str(workdir / "moving.zarr"), str(moving), spacing=geometry.spacing, unit=geometry.unit, orientation=geometry.orientation, origin=geometry.origin, chunks=64, overwrite=True)
    info = {"fixed": str(fixed), "moving": str(moving), "shape": list(t1.shape)}
    done.write_text(json.dumps(info))
    return info


def child_scalereg(workdir: Path, schedule: str) -> None:
    from scalereg.register import register_pyramids

    sched = json.loads(Path(schedule).read_text()) if schedule else SCHEDULE
    manifest = register_pyramids(str(workdir / "fixed.ome.zarr"), str(workdir / "moving.ome.zarr"), str(workdir / "tx-scalereg"), schedule=sched, overwrite=True)
    (workdir / "tx-scalereg.json").write_text(json.dumps([str(workdir / "tx-scalereg" / p) for p in manifest["outputs"]["forward"]]))


def child_ants(workdir: Path) -> None:
    """What a user would do with the whole volume: antspyx's default SyN at full resolution."""
    import zarr

    from scalereg.omezarr import read_pyramid
    from scalereg.register.ants_image import ants, to_ants_image

    images = {}
    for name in ("fixed", "moving"):
        path = workdir / f"{name}.ome.zarr"
        images[name] = to_ants_image(zarr.open_array(str(path / "0"))[:], read_pyramid(str(path)).geometry)
    out = workdir / "tx-ants"
    out.mkdir(exist_ok=True)
    result = ants.registration(images["fixed"], images["moving"], type_of_transform="SyN", outprefix=str(out) + "/")
    (workdir / "tx-ants.json").write_text(json.dumps(result["fwdtransforms"]))


def dice_scores(workdir: Path, forward: list[str]) -> dict[str, float]:
    import zarr

    from scalereg.omezarr import read_pyramid
    from scalereg.register.ants_image import ants, from_ants_image, to_ants_image

    geometry = read_pyramid(str(workdir / "fixed.ome.zarr")).geometry
    labels = zarr.open_array(str(workdir / "labels.zarr"))[:]
    moving = zarr.open_array(str(workdir / "moving_labels.zarr"))[:]
    fixed_image, moving_image = to_ants_image(labels, geometry), to_ants_image(moving, geometry)
    warped = from_ants_image(ants.apply_transforms(fixed_image, moving_image, forward, interpolator="genericLabel"))
    scores = {}
    for label, name in ((1, "gm"), (2, "wm")):
        a, b = warped == label, labels == label
        scores[name] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return scores


def measure(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    process = subprocess.Popen(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(argv)}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(HERE / "data" / "register"))
    parser.add_argument("--schedule", default="", help="JSON schedule file (default: the one in this script)")
    parser.add_argument("_child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args._child:
        children = {"scalereg": lambda: child_scalereg(workdir, args.schedule), "ants": lambda: child_ants(workdir), "prepare": lambda: prepare(workdir)}
        children[args._child[0]]()
        return
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--workdir", str(workdir), "--schedule", args.schedule]
    measure([*command, "prepare"])
    info = json.loads((workdir / "prepared.json").read_text())
    timings = {name: measure([*command, name]) for name in ("scalereg", "ants")}
    rows = []
    for name, (seconds, peak) in timings.items():
        forward = json.loads((workdir / f"tx-{name}.json").read_text())
        rows.append({"run": name, "seconds": seconds, "peak": peak, **dice_scores(workdir, forward)})
    scalereg, ants_row = rows
    import ants as antspy
    import numpy as np

    lines = [
        "# Registration benchmark",
        "",
        f"Command: `python benchmarks/register.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"Machine: nproc {os.cpu_count()}, python {platform.python_version()}, antspyx {getattr(antspy, '__version__', '?')}, numpy {np.__version__}",
        f"Data: MNI152 1 mm {'x'.join(map(str, info['shape']))} moved by a known affine + smooth warp; Dice of grey/white matter carried back",
        "",
        "| run | wall (s) | peak RSS (GiB) | Dice gm | Dice wm |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {"scalereg": "scalereg coarse-to-fine (4 mm rigid/affine/SyN, 2 mm SyN, 8 its)", "ants": "ants.registration(SyN), full 1 mm volumes"}
    for row in rows:
        lines.append(f"| {labels[row['run']]} | {row['seconds']:.1f} | {row['peak'] / 2**30:.2f} | {row['gm']:.4f} | {row['wm']:.4f} |")
    time_ratio = scalereg["seconds"] / ants_row["seconds"]
    memory_ratio = scalereg["peak"] / ants_row["peak"]
    dice_gap = max(ants_row["gm"] - scalereg["gm"], ants_row["wm"] - scalereg["wm"])
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines += [
        "",
        "Floors (issue 3):",
        f"- Dice within 0.01 of single-shot: **{verdict(dice_gap <= 0.01)}** (largest shortfall {dice_gap:+.4f})",
        f"- at most a third of the time: **{verdict(time_ratio <= 1 / 3)}** ({time_ratio:.2f}x)",
        f"- at most a third of the peak memory: **{verdict(memory_ratio <= 1 / 3)}** ({memory_ratio:.2f}x)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "register.md").write_text(text)


if __name__ == "__main__":
    main()
