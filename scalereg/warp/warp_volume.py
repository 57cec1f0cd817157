"""Warp a volume tile by tile in this process (no orchestration).

The Prefect flow `flows.warp_volume` runs the same plan with one task per batch of
tiles on a Dask cluster; this is the plain-Python path.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable, Sequence

from scalereg.convert.convert_volume import run_conversion
from scalereg.warp.plan_warp import plan_warp


def warp_volume(
    transform: str | Sequence[str],
    moving: str,
    reference: str,
    output: str,
    *,
    overwrite: bool = False,
    executor: Executor | None = None,
    on_block_done: Callable[[dict[str, Any]], None] | None = None,
    **plan_options: Any,
) -> dict[str, Any]:
    """Write ``moving`` resampled onto ``reference``'s grid as an OME-Zarr pyramid at
    ``output``; ``plan_options`` are those of `plan_warp`.  Returns a summary whose
    level rows count the tiles that mapped entirely outside the moving image."""
    plan = plan_warp(transform, moving, reference, output, **plan_options)
    return run_conversion(plan, overwrite=overwrite, executor=executor, on_block_done=on_block_done)
