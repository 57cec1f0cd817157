"""Run one block of a conversion, once: skip it if its completion marker exists."""

from __future__ import annotations

import time
from typing import Any

from scalereg.blocks import Block, block_name
from scalereg.convert.copy_source_block import copy_source_block
from scalereg.convert.plan_conversion import ConversionPlan
from scalereg.pyramid.downsample_block import downsample_block
from scalereg.storage import exists, join, open_array, write_marker

PROGRESS_DIR = ".scalereg-progress"


def marker_uri(output: str, level: int, block: Block) -> str:
    return join(output, PROGRESS_DIR, f"level-{level}", block_name(block))


def run_block(plan: ConversionPlan, level: int, block: Block) -> dict[str, Any]:
    """Write ``block`` of ``level``, then its completion marker; idempotent.

    The marker is written after the data, so a block interrupted mid-write is
    redone on the next run, and a re-run writes the same bytes again if it does.
    """
    marker = marker_uri(plan.output, level, block)
    options = plan.storage_options
    if exists(marker, options):
        return {"level": level, "block": block, "skipped": True, "seconds": 0.0}
    start = time.perf_counter()
    target = open_array(join(plan.output, plan.layout.levels[level].path), mode="r+", storage_options=options)
    if plan.levels[level].kind == "copy":
        stats = copy_source_block(plan.source, target, block)
    else:
        source = open_array(join(plan.output, plan.layout.levels[level - 1].path), storage_options=options)
        stats = downsample_block(source, target, block, plan.layout.levels[level].factors, plan.method)
    write_marker(marker, storage_options=options)
    return {"level": level, "block": block, "skipped": False, "seconds": time.perf_counter() - start, **stats}
