#!/usr/bin/env python
"""Benchmark: memory and time of one conversion block against the planner's estimate.

The planner sizes a conversion's blocks from an estimate of bytes per voxel
(`scalereg.pyramid.downsample_block.bytes_per_output_voxel` and the fused level-0
formula in `scalereg.convert.plan_conversion`).  This script checks that estimate: for
each memory budget it plans the conversion of the pyramid benchmark's input (the
1020 x 868 x 680 uint16 mouse brain, written by benchmarks/pyramid.py), then, in a
fresh subprocess per budget, runs the largest level-0 block once and reads the
process's peak RSS above its RSS just before the block (VmHWM, reset through
/proc/self/clear_refs).

    python benchmarks/block_memory.py [--budgets 128MiB,256MiB,512MiB] [--input ZARR]

Prints a Markdown table (budget, block, planner's estimate, measured peak, bytes per
block voxel, seconds).  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _shared import child_row

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = ROOT / "benchmarks" / "data" / "mouse-1020x868x680.zarr"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def child(source: str, budget: str, workdir: str) -> dict:
    import math

    from scalereg.convert import plan_conversion
    from scalereg.convert.output_state import prepare_output
    from scalereg.convert.run_block import run_blocks
    from scalereg.heap import release_free_memory

    output = str(Path(workdir) / "block.ome.zarr")
    plan = plan_conversion(source, output, spacing=[12.5] * 3, orientation="psl", memory_budget=budget)
    prepare_output(plan, overwrite=False)
    level = plan.levels[0]
    block = max(level.blocks, key=lambda b: math.prod(hi - lo for lo, hi in b))
    release_free_memory()
    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := current RSS
    start = time.perf_counter()
    run_blocks(plan, 0, [block])  # as a task runs it (see scalereg.heap)
    seconds = time.perf_counter() - start
    voxels = math.prod(hi - lo for lo, hi in block)
    return {
        "budget": budget,
        "kind": level.kind,
        "block": "x".join(str(hi - lo) for lo, hi in block),
        "blocks": len(level.blocks),
        "estimate": level.bytes_per_task,
        "measured": _peak_bytes() - before,
        "voxels": voxels,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="128MiB,256MiB,512MiB")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="a zarr array (benchmarks/pyramid.py writes the default)")
    parser.add_argument("--child", nargs=2, metavar=("BUDGET", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(str(args.input), *args.child)))
        return 0
    if not args.input.exists():
        print(f"block_memory: {args.input} does not exist; run benchmarks/pyramid.py once to write it", file=sys.stderr)
        return 2
    print(f"Command: `python benchmarks/block_memory.py --budgets {args.budgets}` on {args.input.name}\n")
    print("| budget | level-0 kind | largest block | blocks | planner's estimate (MiB) | measured peak above start (MiB) | bytes per block voxel | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for budget in args.budgets.split(","):
        row, error = child_row([__file__, "--input", str(args.input), "--child", budget])
        if row is None:
            print(f"| {budget} | failed: {error} | | | | | | |")
            continue
        print(
            f"| {row['budget']} | {row['kind']} | {row['block']} | {row['blocks']} | {row['estimate'] / 2**20:.0f} | "
            f"{row['measured'] / 2**20:.0f} | {row['measured'] / row['voxels']:.2f} | {row['seconds']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
