"""Write every level of a planned pyramid as tasks on the running flow's task runner.

Shared by the flows that write pyramids (convert-volume, warp-volume): a plan's
blocks, batched into tasks level after level, with a table artifact per level, a
progress artifact and a terminal progress bar.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Cancelled, Failed, State
from tqdm import tqdm

from flows.side_by_side import STOPPED, on_stop, stop_requested
from scalereg.blocks import balanced_batches, block_name
from scalereg.convert import ConversionPlan, finish_conversion, finish_level, prepare_output
from tasks.artifacts import ProgressArtifact, publish_level_table
from tasks.convert import convert_blocks
from tasks.failures import BAD_INPUT, bad_input_message


def write_pyramid(plan: ConversionPlan, name: str, overwrite: bool, tasks_per_level: int, label: str = "blocks") -> tuple[str, list[dict[str, Any]]] | State:
    """Create or resume ``plan``'s output and write what is missing: returns the output's
    state before the run ("new", "resume", "complete") and the level rows (none when
    it was complete), or a failed state naming the bad input."""
    logger = get_run_logger()
    for note in plan.notes:
        logger.warning(note)
    state = prepare_output(plan, overwrite=overwrite)
    if state == "complete":
        logger.info("%s is already complete for these inputs: nothing to do", plan.output)
        return state, []
    if state == "resume":
        logger.info("resuming %s: %s with completion markers are skipped", plan.output, label)
    rows = write_levels(plan, name, tasks_per_level, label)
    return rows if isinstance(rows, State) else (state, rows)


def write_levels(plan: ConversionPlan, name: str, tasks_per_level: int, label: str = "blocks") -> list[dict[str, Any]] | State:
    """Run every level of ``plan`` (already prepared); returns the level rows, or a
    failed state naming the bad input when a task found one."""
    logger = get_run_logger()
    shipped = plan.for_tasks()
    progress = ProgressArtifact(name, plan.block_count, f"{label.capitalize()} written for {plan.output}")
    rows = []
    with tqdm(total=plan.block_count, desc=name, unit=label.rstrip("s"), disable=None) as bar:
        for level in plan.levels:
            start = time.perf_counter()
            futures = [
                convert_blocks.submit(shipped, level.index, batch, block_label=f"{block_name(batch[0])}-x{len(batch)}")
                for batch in balanced_batches(level.blocks, tasks_per_level)
            ]
            results = []
            # a stage running side by side that fails cancels these: as_completed yields them at once
            with on_stop(lambda: _cancel(futures)):
                for future in as_completed(futures):
                    if stop_requested():
                        return Cancelled(message=STOPPED)
                    future.result(raise_on_failure=False)  # waits; the state is final after this
                    failure = bad_input_message(future.state)
                    if failure:
                        _cancel(futures)  # the level's blocks not started yet: the run fails now
                        return Failed(name=BAD_INPUT, message=failure)
                    done = future.result()
                    results.extend(done)
                    bar.update(len(done))
                    progress.advance(len(done))
            row = finish_level(plan, level.index, results, time.perf_counter() - start)
            publish_level_table(name, row)
            rows.append(row)
            logger.info("level %d: %s voxels, %d %s, %.1f s", level.index, row["shape"], row["blocks"], label, row["seconds"])
    finish_conversion(plan)
    return rows


def _cancel(futures: list[PrefectFuture]) -> None:
    """Cancel the tasks of ``futures`` that have not started (a started one runs to its end)."""
    for future in futures:
        cancel = getattr(getattr(future, "wrapped_future", None), "cancel", None)  # distributed.Future
        if cancel is not None:
            cancel()
