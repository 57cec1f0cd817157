#!/usr/bin/env python
"""Benchmark: build an OME-Zarr pyramid from a >= 1 GiB real brain volume, side by side.

Rows, each run in its own subprocess (so its memory is measured alone), on the same
input, with hot page cache, outputs deleted (and synced) between runs:

  scalereg flow   `scalereg convert IN OUT.ome.zarr --spacing .. --orientation psl`: the
                  convert-volume Prefect flow as the CLI runs it (LocalCluster of
                  infra/clusters/local.yaml, 2 workers x 1 thread; Prefect's temporary
                  server, started by the run itself)
  scalereg core   `scalereg.convert.convert_volume(..., executor=ProcessPoolExecutor(2))`
  ngff-zarr       `to_ngff_image` + `to_multiscales` (its default method, ITKWASM_GAUSSIAN)
                  + `to_ngff_zarr`, 128^3 chunks, the same number of levels, the same
                  compressor; dask threaded scheduler with 2 workers (ngff-zarr 0.50's
                  zarrista writer cannot be pickled, so dask.distributed / processes fail)
  I/O floor       read the input once, write it once as one zarr v3 array (128^3 chunks,
                  Blosc zstd clevel 3 bitshuffle), 2 processes
  scalereg flow, 50 um brain
                  the scalereg flow's command on the 19 MB sample brain itself: what a
                  flow run costs whatever the volume (imports, server, cluster, teardown)

Metrics: wall time (subprocess start to exit), MB/s (input bytes / wall), peak RSS of
the whole process tree (driver + every descendant, summed, sampled every 0.1 s with
psutil), the largest single process's peak RSS, CPU seconds of the tree, levels written.
Each 1x row runs --repeat times (default 3), round-robin; the best repeat is reported.
A 2-process spin probe before and after each run records the cores the (shared) host
really gave; a run waits up to --max-wait s for --min-cores first.

The input is the sample mouse brain (255 x 217 x 170 uint16, 50 um, 'psl') upsampled
with separable linear (trilinear) interpolation, x4 per axis for --scale 1
(1020 x 868 x 680 = 1.20 GB = 1.12 GiB, 12.5 um), stored once as an uncompressed plain zarr v3
array with 128^3 chunks under the work directory (default benchmarks/data/).
--scale S multiplies the voxel count (per-axis zoom 4 * S^(1/3)); --with-4x adds the
scalereg and I/O floor rows on a volume of 4 x S times the voxels (x6.35 per axis for S = 1).

    python benchmarks/pyramid.py [--scale 1] [--with-4x] [--skip-ngff-zarr] [--workdir DIR]
                                 [--repeat 3] [--only KINDS] [--no-warmup] [--results FILE]

Prints a Markdown table and writes it, with the command, the machine and the versions,
to benchmarks/results/pyramid.md (or --results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = ROOT / "benchmarks" / "data"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "pyramid.md"

SOURCE_SPACING_UM = 50.0  # the sample mouse brain
ORIENTATION = "psl"
BASE_ZOOM = 4.0  # per axis, for --scale 1
CHUNK = 128
WORKERS = 2
SAMPLE_SECONDS = 0.1
GIB = 1024**3

# Floors the issue sets.
FLOOR_VS_IO = 1.5  # scalereg wall within 1.5 x the I/O floor's
FLOOR_RSS = 1.5 * GIB  # scalereg peak RSS (whole tree)
FLOOR_RSS_GROWTH = 1.2  # peak RSS at 4 x the volume within 1.2 x that at 1 x


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Volume:
    path: Path
    shape: tuple[int, int, int]
    spacing: float  # isotropic, micrometers
    zoom: float

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 2  # uint16

    @property
    def label(self) -> str:
        return f"{'x'.join(map(str, self.shape))} ({self.nbytes / 1e9:.2f} GB)"


def _linear_axis(n_in: int, n_out: int):
    """Source indices and weights of linear interpolation along one axis, voxel centres aligned."""
    import numpy as np

    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 2)
    return i0, (x - i0).astype(np.float32)


def _interpolate(a, axis: int, i0, w):
    import numpy as np

    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    hi -= lo
    hi *= w
    lo += hi
    return lo


def upsampled_volume(workdir: Path, scale: float) -> Volume:
    """The mouse brain upsampled to ``scale`` x the 1.12 GiB volume, written once (cached)."""
    import numpy as np
    import tifffile
    import zarr

    from scalereg.sample_data import fetch_sample_data

    zoom = BASE_ZOOM * scale ** (1.0 / 3.0)
    mouse = fetch_sample_data(["mouse"])["mouse"]
    source = tifffile.imread(mouse.path).astype(np.float32)
    shape = tuple(int(round(n * zoom)) for n in source.shape)
    spacing = round(SOURCE_SPACING_UM * source.shape[0] / shape[0], 6)  # exact for zoom 4: 12.5
    path = workdir / f"mouse-{'x'.join(map(str, shape))}.zarr"
    volume = Volume(path, shape, spacing, zoom)  # type: ignore[arg-type]
    if path.exists():
        try:
            if zarr.open_array(str(path), mode="r").attrs.get("complete"):
                return volume
        except Exception:
            pass
        shutil.rmtree(path)
    print(f"writing the benchmark input {path} ({volume.label}, zoom {zoom:.4f} per axis) ...", flush=True)
    start = time.perf_counter()
    target = zarr.create_array(
        str(path), shape=shape, chunks=(CHUNK,) * 3, dtype="uint16", compressors=None, fill_value=0, dimension_names=("z", "y", "x")
    )
    axes = [_linear_axis(n, m) for n, m in zip(source.shape, shape)]
    # z-slab by z-slab (one chunk row, 16 planes at a time): memory stays ~0.5 GB at 4x
    for z0 in range(0, shape[0], CHUNK):
        z1 = min(z0 + CHUNK, shape[0])
        slab = np.empty((z1 - z0, shape[1], shape[2]), dtype=np.uint16)
        for s0 in range(z0, z1, 16):
            s1 = min(s0 + 16, z1)
            part = _interpolate(source, 0, axes[0][0][s0:s1], axes[0][1][s0:s1])
            part = _interpolate(part, 1, *axes[1])
            part = _interpolate(part, 2, *axes[2])
            np.rint(part, out=part)
            np.clip(part, 0, 65535, out=part)
            slab[s0 - z0 : s1 - z0] = part
        target[z0:z1] = slab
    target.attrs.update(
        {
            "complete": True,
            "source": str(mouse.path),
            "zoom_per_axis": zoom,
            "interpolation": "linear (separable, voxel centres aligned)",
            "spacing_um": spacing,
            "orientation": ORIENTATION,
        }
    )
    print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    return volume


def small_volume(workdir: Path) -> Volume:
    """The sample brain itself at 50 um as a zarr array: the input of the untimed warm-up runs."""
    import numpy as np
    import tifffile
    import zarr

    from scalereg.sample_data import fetch_sample_data

    mouse = fetch_sample_data(["mouse"])["mouse"]
    path = workdir / "mouse-warmup.zarr"
    data = tifffile.imread(mouse.path).astype(np.uint16)
    if not path.exists():
        zarr.create_array(str(path), shape=data.shape, chunks=(CHUNK,) * 3, dtype="uint16", compressors=None).__setitem__(
            slice(None), data
        )
    return Volume(path, data.shape, SOURCE_SPACING_UM, 1.0)  # type: ignore[arg-type]


def read_through(path: Path) -> None:
    """Read every file under ``path``: the same (hot) page cache for every run."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                while handle.read(16 << 20):
                    pass


# --------------------------------------------------------------------------- the runs (children)


def _blosc():
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _levels_for(shape: tuple[int, ...], spacing: float) -> int:
    from scalereg.pyramid import level_schedule

    return 1 + len(level_schedule(shape, (spacing,) * 3))


def child_scalereg_core(source: str, output: str, spacing: float) -> dict[str, Any]:
    from scalereg.convert import convert_volume

    with ProcessPoolExecutor(WORKERS) as executor:
        summary = convert_volume(source, output, spacing=(spacing,) * 3, orientation=ORIENTATION, executor=executor)
    return {"levels": [[row["level"], row["seconds"], row["blocks"]] for row in summary["levels"]]}


def child_ngff_zarr(source: str, output: str, spacing: float) -> dict[str, Any]:
    import dask
    import dask.array as da
    import zarr
    from ngff_zarr import to_multiscales, to_ngff_image, to_ngff_zarr

    # ngff-zarr 0.50 writes through zarrista, whose arrays cannot be pickled: neither
    # dask.distributed nor the multiprocessing scheduler can run it; threads can.
    dask.config.set(scheduler="threads", num_workers=WORKERS)
    array = da.from_zarr(zarr.open_array(source, mode="r"))
    levels = _levels_for(array.shape, spacing)
    start = time.perf_counter()
    image = to_ngff_image(
        array,
        dims=("z", "y", "x"),
        scale={d: spacing for d in "zyx"},
        translation={d: 0.0 for d in "zyx"},
        name="image",
        axes_units={d: "micrometer" for d in "zyx"},
    )
    multiscales = to_multiscales(image, scale_factors=[2**k for k in range(1, levels)], chunks=CHUNK)
    planned = time.perf_counter()
    to_ngff_zarr(output, multiscales, version="0.5", compressors=[_blosc()])
    return {
        "method": multiscales.method.name,
        "to_multiscales_s": round(planned - start, 2),
        "to_ngff_zarr_s": round(time.perf_counter() - planned, 2),
    }


def _floor_copy(source: str, output: str, block: tuple[tuple[int, int], ...]) -> None:
    import zarr

    region = tuple(slice(a, b) for a, b in block)
    zarr.open_array(output, mode="r+")[region] = zarr.open_array(source, mode="r")[region]


def child_io_floor(source: str, output: str, spacing: float) -> dict[str, Any]:
    import itertools

    import zarr

    src = zarr.open_array(source, mode="r")
    zarr.create_array(
        output, shape=src.shape, chunks=(CHUNK,) * 3, dtype=src.dtype, compressors=_blosc(), fill_value=0, dimension_names=("z", "y", "x")
    )
    # blocks of whole chunks, 128 x 256 x the whole row (about scalereg's level-0 block)
    steps = (CHUNK, 2 * CHUNK, math.ceil(src.shape[2] / CHUNK) * CHUNK)
    ranges = [[(s, min(s + b, n)) for s in range(0, n, b)] for n, b in zip(src.shape, steps)]
    blocks = list(itertools.product(*ranges))
    with ProcessPoolExecutor(WORKERS) as executor:
        list(executor.map(_floor_copy, [source] * len(blocks), [output] * len(blocks), blocks))
    return {"blocks": len(blocks)}


CHILDREN = {"scalereg-core": child_scalereg_core, "ngff-zarr": child_ngff_zarr, "io-floor": child_io_floor}


def run_child(kind: str, source: str, output: str, spacing: float) -> None:
    start = time.perf_counter()
    extra = CHILDREN[kind](source, output, spacing)
    print("RESULT " + json.dumps({"seconds": round(time.perf_counter() - start, 3), **extra}), flush=True)


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    name: str
    volume: Volume
    seconds: float
    peak_tree: int
    peak_single: int
    peak_single_name: str
    max_processes: int
    levels: int
    returncode: int
    notes: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # user + system, summed over the tree (last sample of each process)
    cpu_roles: dict[str, float] = field(default_factory=dict)
    rss_roles: dict[str, int] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.volume.nbytes / 1e6 / self.seconds


_KNOWN_LABELS = {"driver", "prefect server", "resource tracker", "forkserver", "dask worker", "forked worker"}


def _process_label(proc, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "?"
    for key, label in (
        ("uvicorn", "prefect server"),
        ("prefect.server", "prefect server"),
        ("resource_tracker", "resource tracker"),
        ("forkserver", "forkserver"),
        ("spawn_main", "dask worker"),
    ):
        if key in cmd:
            return label
    return "forked worker" if "pyramid.py" in cmd else cmd[:40]


def measure(name: str, cmd: list[str], volume: Volume, output: Path, env: dict[str, str], log: Path) -> Measurement:
    """Run ``cmd`` once, sampling the RSS (and CPU time) of its whole process tree every 0.1 s."""
    import psutil

    read_through(volume.path)
    os.sync()
    series = []
    peak_tree = peak_single = max_procs = 0
    peak_name = ""
    names: dict[int, str] = {}
    cpu: dict[int, float] = {}  # last CPU seconds (user + system) seen per process
    role_peak: dict[str, int] = {}  # peak of the summed RSS of each kind of process
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(output.parent))
        while True:
            done = proc.poll() is not None
            try:
                procs = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            total, count = 0, 0
            by_role: dict[str, int] = {}
            for p in procs:
                try:
                    with p.oneshot():
                        rss = p.memory_info().rss
                        times = p.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if names.get(p.pid) not in _KNOWN_LABELS:
                    # again until known: a process caught between fork and exec still shows its parent's command line
                    names[p.pid] = _process_label(p, proc.pid)
                cpu[p.pid] = times.user + times.system
                total += rss
                count += 1
                by_role[names[p.pid]] = by_role.get(names[p.pid], 0) + rss
                if rss > peak_single:
                    peak_single, peak_name = rss, names[p.pid]
            peak_tree = max(peak_tree, total)
            for role, rss in by_role.items():
                role_peak[role] = max(role_peak.get(role, 0), rss)
            max_procs = max(max_procs, count)
            series.append((round(time.perf_counter() - start, 2), total, count))
            if done:
                break
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
    log.with_suffix(".rss.csv").write_text("t_s,tree_rss_bytes,processes\n" + "".join(f"{t},{r},{c}\n" for t, r, c in series))
    roles: dict[str, float] = {}
    for pid, used in cpu.items():
        roles[names[pid]] = roles.get(names[pid], 0.0) + used
    m = Measurement(name, volume, seconds, peak_tree, peak_single, peak_name, max_procs, _count_levels(output), proc.returncode)
    m.cpu_seconds = sum(roles.values())
    m.cpu_roles = roles
    m.rss_roles = role_peak
    if proc.returncode:
        m.notes.append(f"FAILED (exit {proc.returncode}, see {log})")
    m.notes += _notes(name, output, log)
    return m


def _count_levels(output: Path) -> int:
    meta = output / "zarr.json"
    if not meta.exists():
        return 0
    attributes = json.loads(meta.read_text()).get("attributes", {})
    if "ome" in attributes:
        datasets = attributes["ome"]["multiscales"][0]["datasets"]
        return sum(1 for d in datasets if (output / d["path"] / "zarr.json").exists())
    return 1 if json.loads(meta.read_text()).get("node_type") == "array" else 0


def _notes(name: str, output: Path, log: Path) -> list[str]:
    notes = []
    result = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if name.startswith("scalereg"):
        meta = output / "zarr.json"
        if meta.exists():
            status = json.loads(meta.read_text())["attributes"].get("scalereg", {})
            done = status.get("levels_complete", [])
            inner = sum(entry.get("seconds", 0.0) for entry in done)
            blocks = sum(entry.get("blocks", 0) for entry in done)
            per_level = " + ".join(f"{entry.get('seconds', 0.0):.1f}" for entry in done)
            notes.append(f"{blocks} blocks; levels {inner:.1f} s ({per_level}); status {status.get('status')}")
    if name == "ngff-zarr" and result:
        notes.append(
            f"{result['method']}, dask threads x {WORKERS}; to_multiscales {result['to_multiscales_s']} s, "
            f"to_ngff_zarr {result['to_ngff_zarr_s']} s"
        )
    if name == "I/O floor" and result:
        notes.append(f"{WORKERS} processes, {result['blocks']} blocks of 128 x 256 x whole rows")
    if name.startswith("scalereg flow"):
        notes.append(f"LocalCluster {WORKERS} workers x 1 thread, Prefect temporary server")
    if name.startswith("scalereg core"):
        notes.append(f"ProcessPoolExecutor({WORKERS})")
    return notes


# --------------------------------------------------------------------------- main


def _commands(kind: str, volume: Volume, output: Path) -> list[str]:
    if kind == "scalereg-flow":
        exe = Path(sys.executable).with_name("scalereg")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "scalereg.cli"]
        spacing = f"{volume.spacing:g}"
        return [*base, "convert", str(volume.path), str(output), "--spacing", spacing, spacing, spacing, "--orientation", ORIENTATION]
    return [sys.executable, str(Path(__file__).resolve()), "_child", kind, str(volume.path), str(output), repr(volume.spacing)]


def _child_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A Prefect home of its own: no configured API URL, so the flow starts Prefect's
    # temporary server itself, as `scalereg convert` does on a fresh machine.
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILE", None)
    env["PREFECT_HOME"] = str(workdir / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.sync()


def _machine() -> dict[str, str]:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "scalereg", "ngff-zarr", "itkwasm-downsample", "zarrista", "zarr", "numcodecs", "numpy", "scipy",
        "dask", "distributed", "prefect", "prefect-dask", "psutil",
    ):  # fmt: skip
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _spin(seconds: float) -> float:
    begin = time.process_time()
    while time.process_time() - begin < seconds:
        pass
    return time.process_time() - begin


def cpu_capacity(workers: int = WORKERS, seconds: float = 0.25) -> float:
    """Cores this machine actually gives ``workers`` busy processes right now.

    Shared virtual machines can be throttled below their vCPU count (seen here: 2
    vCPUs that delivered 1 core for minutes); a row measured then is not comparable.
    """
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_spin, [0.01] * workers))
        begin = time.perf_counter()
        used = sum(pool.map(_spin, [seconds] * workers))
        return used / (time.perf_counter() - begin)


def wait_for_capacity(min_cores: float, max_wait: float) -> float:
    """Probe the cores available; while under ``min_cores``, wait (at most ``max_wait`` s)."""
    deadline = time.monotonic() + max_wait
    capacity = cpu_capacity()
    while capacity < min_cores and time.monotonic() < deadline:
        time.sleep(5)
        capacity = cpu_capacity()
    return capacity


@dataclass
class Row:
    """Every repeat of one run."""

    name: str
    volume: Volume
    runs: list[Measurement] = field(default_factory=list)
    capacity: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(m.returncode == 0 for m in self.runs)

    @property
    def best(self) -> int:
        """Index of the fastest repeat: the least disturbed by a throttled or busy host."""
        return min(range(len(self.runs)), key=lambda i: self.runs[i].seconds)

    @property
    def seconds(self) -> float:
        return self.runs[self.best].seconds

    @property
    def cpu_seconds(self) -> float:
        return _median([m.cpu_seconds for m in self.runs])

    @property
    def peak_tree(self) -> int:
        return max(m.peak_tree for m in self.runs)

    @property
    def peak_single(self) -> Measurement:
        return max(self.runs, key=lambda m: m.peak_single)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def table(rows: list[Row]) -> str:
    lines = [
        "| run | input | wall (s), best of repeats | MB/s | peak RSS, tree (GiB) | largest process (GiB) | processes | CPU (s) | cores available | levels | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        walls = [m.seconds for m in row.runs]
        spread = f" (median {_median(walls):.1f}, max {max(walls):.1f})" if len(walls) > 1 else ""
        single = row.peak_single
        last = row.runs[row.best]
        lines.append(
            f"| {row.name} | {row.volume.label} | {row.seconds:.1f}{spread} | {row.volume.nbytes / 1e6 / row.seconds:.1f} | "
            f"{_gib(row.peak_tree)} | {_gib(single.peak_single)} ({single.peak_single_name}) | "
            f"{max(m.max_processes for m in row.runs)} | {row.cpu_seconds:.0f} | "
            f"{row.capacity[row.best]:.1f} | {last.levels} | {'; '.join(last.notes)} |"
        )
    return "\n".join(lines)


FIXED_COST_ROW = "scalereg flow, 50 um brain (19 MB)"


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's floors, for scalereg's pyramid builder (the core row, a library call
    as the ngff-zarr and I/O floor rows are), then the same floors for the CLI's flow
    around that builder, with what its fixed cost (its run on the 19 MB brain) explains."""
    get = {row.name: row for row in rows}
    out = ["Floors of the issue, on scalereg's pyramid builder (`scalereg.convert.convert_volume`, called as "
           "ngff-zarr's `to_multiscales` + `to_ngff_zarr` and the I/O floor's copy are):", ""]
    out += _floors(get, "scalereg core")
    out += ["", "The same floors for `scalereg convert`, the convert-volume Prefect flow that runs the same builder "
            "block by block as tasks (process start to exit: its Prefect server and Dask cluster start-up included):", ""]
    out += _floors(get, "scalereg flow")
    flow, core, fixed = get.get("scalereg flow"), get.get("scalereg core"), get.get(FIXED_COST_ROW)
    flow4, core4, floor, floor4 = (get.get(n) for n in ("scalereg flow (4x)", "scalereg core (4x)", "I/O floor", "I/O floor (4x)"))
    if _ran(flow, core):
        line = f"- the flow's time beyond the core's (orchestration: Prefect server, Dask cluster, task runs): {flow.seconds - core.seconds:.1f} s at 1x"  # type: ignore[union-attr]
        if _ran(flow4, core4):
            line += f", {flow4.seconds - core4.seconds:.1f} s at 4x"  # type: ignore[union-attr]
        out.append(line + " (benchmarks/overhead.py measures it on the whole pipeline)")
    if _ran(fixed):
        line = (
            f"- the flow's fixed cost, the same command on the 50 um brain (19 MB, {fixed.runs[fixed.best].levels} levels): "  # type: ignore[union-attr]
            f"{fixed.seconds:.1f} s"  # type: ignore[union-attr]
        )
        for big, io, label in ((flow, floor, "1x"), (flow4, floor4, "4x")):
            if _ran(big, io):
                rest = big.seconds - fixed.seconds  # type: ignore[union-attr]
                line += f"; the flow less it at {label}: {rest:.1f} s = {rest / io.seconds:.2f}x of the I/O floor"  # type: ignore[union-attr]
        out.append(line)
    slow = [row.name for row in rows if row.runs and row.capacity[row.best] < 0.8 * WORKERS]
    if slow:
        out.append(
            f"- caution: the best run of {', '.join(slow)} saw fewer than {0.8 * WORKERS:.1f} of {WORKERS} cores "
            "(shared, throttled host; see 'cores available'); its wall time is not comparable with the others. "
            "CPU seconds are not affected"
        )
    return out


def _ran(*rows: Row | None) -> bool:
    return all(row is not None and row.ok for row in rows)


def _floors(get: dict[str, Row], name: str) -> list[str]:
    row, floor, ngff = get.get(name), get.get("I/O floor"), get.get("ngff-zarr")
    if row is None or not row.ok:
        return [f"- {name}: did not run or failed; no verdicts"]
    out = []
    t = row.seconds
    if _ran(ngff):
        verdict = "PASS" if t < ngff.seconds else "FAIL"  # type: ignore[union-attr]
        out.append(f"- {name} faster than ngff-zarr: **{verdict}** ({t:.1f} s vs {ngff.seconds:.1f} s: {ngff.seconds / t:.2f}x)")  # type: ignore[union-attr]
    if _ran(floor):
        ratio = t / floor.seconds  # type: ignore[union-attr]
        verdict = "PASS" if ratio <= FLOOR_VS_IO else "FAIL"
        out.append(
            f"- {name} within {FLOOR_VS_IO}x of the I/O floor's wall time: **{verdict}** "
            f"({ratio:.2f}x: {t:.1f} s vs {floor.seconds:.1f} s; CPU {row.cpu_seconds:.0f} s vs {floor.cpu_seconds:.0f} s)"  # type: ignore[union-attr]
        )
    verdict = "PASS" if row.peak_tree < FLOOR_RSS else "FAIL"
    out.append(
        f"- {name} peak RSS under 1.5 GiB (whole process tree): **{verdict}** "
        f"({_gib(row.peak_tree)} GiB; largest single process {_gib(row.peak_single.peak_single)} GiB)"
    )
    big, big_floor = get.get(f"{name} (4x)"), get.get("I/O floor (4x)")
    if _ran(big, big_floor):
        ratio = big.seconds / big_floor.seconds  # type: ignore[union-attr]
        verdict = "PASS" if ratio <= FLOOR_VS_IO else "FAIL"
        out.append(
            f"- {name} at 4x the volume within {FLOOR_VS_IO}x of the I/O floor's wall time at 4x: **{verdict}** "
            f"({ratio:.2f}x: {big.seconds:.1f} s vs {big_floor.seconds:.1f} s)"  # type: ignore[union-attr]
        )
    if _ran(big):
        ratio = big.peak_tree / row.peak_tree  # type: ignore[union-attr]
        verdict = "PASS" if ratio <= FLOOR_RSS_GROWTH else "FAIL"
        out.append(
            f"- {name} peak RSS at 4x the volume within {FLOOR_RSS_GROWTH}x of 1x: **{verdict}** "
            f"({_gib(big.peak_tree)} vs {_gib(row.peak_tree)} GiB: {ratio:.2f}x; largest process "  # type: ignore[union-attr]
            f"{_gib(big.peak_single.peak_single)} vs {_gib(row.peak_single.peak_single)} GiB)"  # type: ignore[union-attr]
        )
    return out


def breakdown(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        m = row.runs[row.best]
        rss = ", ".join(f"{role} {_gib(v)}" for role, v in sorted(m.rss_roles.items(), key=lambda kv: -kv[1]))
        cpu = ", ".join(f"{role} {v:.1f}" for role, v in sorted(m.cpu_roles.items(), key=lambda kv: -kv[1]))
        lines.append(f"- {row.name}: peak RSS (GiB) {rss}; CPU (s) {cpu}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, source, output, spacing = argv[1:5]
        run_child(kind, source, output, float(spacing))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="voxels relative to the 1.12 GiB (x4 per axis) volume")
    parser.add_argument("--with-4x", action="store_true", help="also run scalereg and the I/O floor on 4x the voxels (peak-RSS growth floor)")
    parser.add_argument("--skip-ngff-zarr", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats of every 1x row, round-robin (the best is reported)")
    parser.add_argument("--min-cores", type=float, default=0.8 * WORKERS, help="wait before a run until the host gives this many cores")
    parser.add_argument("--max-wait", type=float, default=120.0, help="longest wait for --min-cores before running anyway (s)")
    parser.add_argument("--only", default=None, help="comma-separated subset of: scalereg-flow, scalereg-core, ngff-zarr, io-floor")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs on the 50 um brain")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="inputs, outputs, logs (default benchmarks/data)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)

    began = time.perf_counter()
    workdir = args.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = _child_env(workdir)
    prep_start = time.perf_counter()
    volume = upsampled_volume(workdir, args.scale)
    big = upsampled_volume(workdir, 4 * args.scale) if args.with_4x else None
    prep_seconds = time.perf_counter() - prep_start
    free = shutil.disk_usage(workdir).free
    if free < 2 * (big or volume).nbytes:
        print(f"warning: only {free / GIB:.1f} GiB free under {workdir}", flush=True)

    plan = [("scalereg flow", "scalereg-flow"), ("scalereg core", "scalereg-core")]
    if not args.skip_ngff_zarr:
        plan.append(("ngff-zarr", "ngff-zarr"))
    plan.append(("I/O floor", "io-floor"))
    if args.only:
        wanted = set(args.only.split(","))
        plan = [(name, kind) for name, kind in plan if kind in wanted]

    small = small_volume(workdir)
    if not args.no_warmup:
        # Untimed: compiles .pyc files, creates the Prefect database, warms the page cache
        # for the libraries; the same for every row.
        for name, kind in plan:
            out = workdir / f"warmup-{kind}.ome.zarr"
            _remove(out)
            w = measure(name, _commands(kind, small, out), small, out, env, workdir / "logs" / f"warmup-{kind}.log")
            print(f"warm-up {name}: {w.seconds:.1f} s{' FAILED' if w.returncode else ''}", flush=True)
            _remove(out)

    rows = [Row(name, volume) for name, _ in plan]
    kinds = [kind for _, kind in plan]
    if "scalereg-flow" in kinds:  # the flow's fixed cost: the same command on a 19 MB volume
        rows.append(Row(FIXED_COST_ROW, small))
        kinds.append("scalereg-flow")
    schedule = [(row, kind, f"{kind}{'-small' if row.volume is small else ''}-{i + 1}") for i in range(args.repeat) for row, kind in zip(rows, kinds)]
    if big is not None:
        for name, kind in plan:
            if kind.startswith("scalereg") or kind == "io-floor":
                row = Row(f"{name} (4x)", big)
                rows.append(row)
                schedule.append((row, kind, f"{kind}-4x"))
    for row, kind, tag in schedule:
        out = workdir / f"out-{kind}.ome.zarr"
        _remove(out)
        before = wait_for_capacity(args.min_cores, args.max_wait)
        m = measure(row.name, _commands(kind, row.volume, out), row.volume, out, env, workdir / "logs" / f"{tag}.log")
        row.capacity.append(min(before, cpu_capacity()))  # probed before and after the run
        _remove(out)
        row.runs.append(m)
        print(
            f"{tag}: {m.seconds:.1f} s ({row.capacity[-1]:.1f} cores available), {m.mb_per_s:.1f} MB/s, "
            f"peak RSS tree {_gib(m.peak_tree)} GiB, largest {_gib(m.peak_single)} GiB ({m.peak_single_name}), "
            f"{m.levels} levels, peak RSS by kind "
            + ", ".join(f"{role} {_gib(rss)}" for role, rss in sorted(m.rss_roles.items(), key=lambda kv: -kv[1]))
            + " GiB, CPU "
            + ", ".join(f"{role} {used:.1f} s" for role, used in sorted(m.cpu_roles.items(), key=lambda kv: -kv[1]))
            + f"; {'; '.join(m.notes)}",
            flush=True,
        )

    total = time.perf_counter() - began
    text = report(args, argv, rows, prep_seconds, total)
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(f"\nwritten {args.results} (total {total / 60:.1f} min)")
    return 0 if all(row.ok for row in rows) else 1


def report(args, argv: list[str], rows: list[Row], prep_seconds: float, total: float) -> str:
    machine = _machine()
    versions = _versions()
    command = " ".join(["python", "benchmarks/pyramid.py", *argv])
    return "\n".join(
        [
            "# Pyramid benchmark",
            "",
            f"Command: `{command}` (run {time.strftime('%Y-%m-%d %H:%M %Z')}; {total / 60:.1f} min in all, "
            f"of which {prep_seconds:.0f} s writing inputs that were not cached)",
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            "",
            table(rows),
            "",
            "Where the memory and the CPU go (best repeat of each row; peak RSS summed per kind of process, "
            "CPU seconds per kind):",
            "",
            *breakdown(rows),
            "",
            *verdicts(rows),
            "",
            "Conditions: every run is a fresh subprocess on the same input (the sample mouse brain upsampled "
            "trilinearly, an uncompressed zarr v3 array with 128^3 chunks), read through once just before the run "
            "(hot page cache for all rows); outputs are written to the same disk, deleted and synced between runs. "
            f"{args.repeat} repeat(s) of each 1x row, round-robin; wall is the best repeat's (median and max "
            "in brackets), CPU the median, peak RSS the maximum over repeats; the 4x rows run once. "
            "Wall time is from process start to exit (imports, cluster and server start-up included). RSS is summed "
            f"over the process and all its descendants every {SAMPLE_SECONDS} s (shared pages count once per process). "
            "CPU is user + system seconds summed over the tree. 'cores available' is the lower of two 2-process "
            "spin probes, just before and just after the best run (this shared VM was seen throttled from 2 to 1 "
            f"core for minutes; a run waits up to {args.max_wait:.0f} s for {args.min_cores:.1f} cores). Untimed warm-up runs of every row on the 50 um brain precede the timed ones"
            f"{' (skipped here)' if args.no_warmup else ''}.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
