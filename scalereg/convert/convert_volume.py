"""Convert a volume to an OME-Zarr pyramid in this process (no orchestration).

The Prefect flow `flows.convert_volume` runs the same plan with one task per block
on a Dask cluster; this function is the plain-Python path used by tests, benchmarks
and anyone who wants the core without Prefect.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, as_completed
from typing import Any, Callable, Sequence

from scalereg.blocks import block_voxels
from scalereg.convert.output_state import finish_conversion, finish_level, prepare_output
from scalereg.convert.plan_conversion import ConversionPlan, plan_conversion
from scalereg.convert.run_block import run_block_and_release
from scalereg.output_lock import OutputLock


def convert_volume(
    source: str,
    output: str,
    *,
    overwrite: bool = False,
    executor: Executor | None = None,
    on_block_done: Callable[[dict[str, Any]], None] | None = None,
    **plan_options: Any,
) -> dict[str, Any]:
    """Write ``source`` as an OME-Zarr pyramid at ``output``; returns a summary.

    ``plan_options`` are those of `plan_conversion` (spacing, unit, orientation,
    ngff_version, chunks, shards, labels, memory_budget, ...).  With an
    ``executor`` (e.g. a ProcessPoolExecutor) the blocks of a level run in parallel.
    """
    plan = plan_conversion(source, output, **plan_options)
    return run_conversion(plan, overwrite=overwrite, executor=executor, on_block_done=on_block_done)


def run_conversion(
    plan: ConversionPlan,
    *,
    overwrite: bool = False,
    executor: Executor | None = None,
    on_block_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write ``plan`` (see `convert_volume`), holding its output's lock meanwhile: a
    second writer of the same output, here or in a flow, is refused naming this one."""
    with OutputLock(plan.output, run="scalereg.convert.run_conversion (Python)", storage_options=plan.storage_options):
        state = prepare_output(plan, overwrite=overwrite)
        rows: list[dict[str, Any]] = []
        if state != "complete":
            for level in plan.levels:
                start = time.perf_counter()
                results = _map(executor, plan, level.index, level.blocks, on_block_done)
                rows.append(finish_level(plan, level.index, results, time.perf_counter() - start))
            finish_conversion(plan)
    return {"output": plan.output, "state": state, "levels": rows, "notes": list(plan.notes)}


def _map(
    executor: Executor | None,
    plan: ConversionPlan,
    level: int,
    blocks: Sequence,
    on_block_done: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    results = []
    if executor is None:
        for block in blocks:
            results.append(run_block_and_release(plan, level, block))
            if on_block_done:
                on_block_done(results[-1])
        return results
    # the largest blocks first: the small ones at the volume's far edges fill in at the end
    futures = [executor.submit(run_block_and_release, plan, level, block) for block in sorted(blocks, key=block_voxels, reverse=True)]
    for future in as_completed(futures):
        results.append(future.result())
        if on_block_done:
            on_block_done(results[-1])
    return results
