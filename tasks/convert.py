"""Tasks of the conversion flow: one per block of a pyramid level."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from scalereg.blocks import Block
from scalereg.convert import ConversionPlan
from scalereg.convert.run_block import run_blocks
from scalereg.heap import share_malloc_arenas
from tasks.deadline import block_deadline, deadline
from tasks.failures import fail_on_input_error, retry_transient


@task(
    name="convert-blocks",
    task_run_name="level-{level}-{block_label}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,  # completion markers, not Prefect's cache, decide what is done
)
@fail_on_input_error
def convert_blocks(plan: ConversionPlan, level: int, blocks: list[Block], block_label: str = "") -> list[dict[str, Any]]:
    """Write a batch of blocks of one level (copy from the source, or downsample the
    level below); each block has its own completion marker, so a retry or a re-run
    redoes only the blocks that did not finish.  A batch that hangs (stuck storage) is
    stopped at its deadline and retried."""
    share_malloc_arenas(_worker_threads() + 1)  # see scalereg.heap: codec threads share the task threads' heaps
    with deadline(block_deadline(len(blocks)), f"level {level} blocks {block_label or len(blocks)}"):
        return run_blocks(plan, level, blocks)


def _worker_threads() -> int:
    """Task threads of the Dask worker this runs in (1 elsewhere)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


