#!/usr/bin/env python
"""Benchmark: the same conversion blocks in a process pool and in Dask workers.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc
map every allocation over 128 KiB afresh (see scalereg/heap.py).  This script converts
the overhead benchmark's fixed volume (benchmarks/overhead.py prepares it) with
`scalereg.convert.convert_volume` and three executors, no Prefect:

  pool            ProcessPoolExecutor(2), blocks as `run_block`
  dask            LocalCluster 2 workers x 1 thread, blocks as `run_block` (worker's malloc as Dask sets it)
  dask + heap     the same cluster, blocks as the flow's tasks run them: `run_blocks`
                  (heap_for_mid_size_allocations) after `share_malloc_arenas(threads + 1)`

Each row runs in its own subprocess, --repeat times in a row after one untimed warm-up
conversion; it prints the wall times and the workers' peak RSS (ru_maxrss).

    python benchmarks/block_tasks.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

from _shared import child_row

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "overhead"
ROWS = ("pool", "dask", "dask + heap")


def _block_as_task(plan, level, block):
    """A block run the way tasks/convert.py runs a batch of blocks (without Prefect)."""
    from scalereg.convert.run_block import run_blocks
    from scalereg.heap import share_malloc_arenas

    share_malloc_arenas(2)  # the worker's one task thread, plus one
    return run_blocks(plan, level, [block])[0]


class _AsTasks(Executor):
    """Submits `run_block(plan, level, block)` calls as `_block_as_task`."""

    def __init__(self, inner: Executor):
        self.inner = inner

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self.inner.submit(_block_as_task, *args, **kwargs)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(row: str, repeat: int, workdir: Path) -> dict:
    from scalereg.convert import convert_volume

    prepared = json.loads((DATA / "prepared.json").read_text())
    geometry = {"spacing": prepared["spacing_um"], "orientation": prepared["orientation"]}

    def convert(executor) -> float:
        output = workdir / "fixed.ome.zarr"
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        convert_volume(str(DATA / "fixed.zarr"), str(output), executor=executor, **geometry)
        return time.perf_counter() - start

    if row == "pool":
        with ProcessPoolExecutor(2) as pool:
            convert(pool)  # warm-up: imports in the pool's processes
            seconds = [convert(pool) for _ in range(repeat)]
            peaks = list(pool.map(_peak_gib_after, range(2)))
        return {"row": row, "seconds": seconds, "workers_peak_gib": peaks}
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        executor = client.get_executor(pure=False)
        if row == "dask + heap":
            executor = _AsTasks(executor)
        convert(executor)
        seconds = [convert(executor) for _ in range(repeat)]
        peaks = sorted(client.run(_peak_gib).values())
    return {"row": row, "seconds": seconds, "workers_peak_gib": peaks}


def _peak_gib_after(_: int) -> float:
    time.sleep(0.2)  # one call per pool process (most likely)
    return _peak_gib()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat, args.workdir)))
        return 0
    if not (DATA / "prepared.json").exists():
        print(f"block_tasks: {DATA} is not prepared; run benchmarks/overhead.py once", file=sys.stderr)
        return 2
    print(f"Command: `python benchmarks/block_tasks.py --repeat {args.repeat}` (convert {DATA / 'fixed.zarr'}, no Prefect)\n")
    print("| executor | wall per conversion (s) | workers' peak RSS (GiB) |")
    print("|---|---|---|")
    for row in ROWS:
        result, error = child_row([__file__, "--repeat", str(args.repeat), "--child", row, "--workdir"])
        if result is None:
            print(f"| {row} | failed: {error} | |")
            continue
        print(f"| {row} | {', '.join(f'{s:.2f}' for s in result['seconds'])} | {', '.join(f'{p:.2f}' for p in result['workers_peak_gib'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
