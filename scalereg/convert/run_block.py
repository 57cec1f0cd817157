"""Run one block of a conversion, once: skip it if its completion marker exists."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import zarr

from scalereg.blocks import Block, block_name
from scalereg.convert.copy_source_block import copy_and_downsample_block, copy_source_block
from scalereg.convert.plan_conversion import ConversionPlan
from scalereg.heap import heap_for_mid_size_allocations, release_free_memory
from scalereg.errors import input_error_from_os
from scalereg.omezarr.level_checksums import ALGORITHM as CHECKSUM_ALGORITHM
from scalereg.pyramid.stream_block import stream_downsample_block
from scalereg.storage import exists, filesystem, join, open_array, write_marker
from scalereg.storage_errors import translating

PROGRESS_DIR = ".scalereg-progress"
# Files a run needs until it finishes (e.g. transforms converted for a warp).
SCRATCH_DIR = ".scalereg-scratch"


def marker_uri(output: str, level: int, block: Block) -> str:
    return join(output, PROGRESS_DIR, f"level-{level}", block_name(block))


def _writable(plan: ConversionPlan, level: int):
    array = open_array(join(plan.output, plan.layout.levels[level].path), mode="r+", storage_options=plan.storage_options)
    # zarr's default skips writing chunks equal to the fill value, but its check
    # costs about as much as compressing the chunk: write them all.
    return array.with_config({"write_empty_chunks": True})


def run_blocks(plan: ConversionPlan, level: int, blocks: list[Block]) -> list[dict[str, Any]]:
    """Several blocks in one call (one task), each with its own completion marker.

    In a process whose malloc thresholds are fixed (a Dask worker) the blocks' chunk
    buffers come from a heap kept for the call (see scalereg.heap)."""
    with heap_for_mid_size_allocations():
        return [run_block(plan, level, block) for block in blocks]


@translating(lambda plan, *args, **kwargs: plan.output)
def run_block(plan: ConversionPlan, level: int, block: Block) -> dict[str, Any]:
    """Write ``block`` of ``level``, then its completion marker; idempotent.

    The marker is written after the data, so a block interrupted mid-write is
    redone on the next run, and a re-run writes the same bytes again if it does.
    """
    marker = marker_uri(plan.output, level, block)
    options = plan.storage_options
    if exists(marker, options):
        return {"level": level, "block": block, "skipped": True, "seconds": 0.0, "digests": _recorded_digests(marker, options)}
    start = time.perf_counter()
    try:
        with zarr_concurrency(plan.chunks_in_flight):
            stats = _write_block(plan, level, block)
        # the chunk digests, per level written, go into the marker: a resumed run that
        # skips this block still knows them for the levels' checksums
        digests = {str(level + offset): chunk_digests for offset, chunk_digests in enumerate(stats.pop("digests", []))}
        write_marker(marker, json.dumps({"digests": digests, "algorithm": CHECKSUM_ALGORITHM}), storage_options=options)
    except OSError as error:  # a disk that filled up, a filesystem that went read-only: the output's problem
        user = input_error_from_os(error, subject=plan.output)
        if user is None:
            raise
        raise user from None
    return {"level": level, "block": block, "skipped": False, "seconds": time.perf_counter() - start, "digests": digests, **stats}


def _write_block(plan: ConversionPlan, level: int, block: Block) -> dict[str, Any]:
    target = _writable(plan, level)
    kind = plan.levels[level].kind
    if kind == "copy":
        stats = copy_source_block(plan.source, target, block)
    elif kind == "copy+downsample":
        fused = range(1, 1 + sum(1 for level_plan in plan.levels[1:3] if level_plan.kind == "fused"))
        factors = [plan.layout.levels[index].factors for index in fused]
        targets = [_writable(plan, index) for index in fused]
        stats = copy_and_downsample_block(plan.source, target, targets, block, factors, plan.method)
    else:
        source = open_array(join(plan.output, plan.layout.levels[level - 1].path), storage_options=plan.storage_options)
        stats = stream_downsample_block(source, target, block, plan.layout.levels[level].factors, plan.method)
    return stats


_concurrency_lock = threading.Lock()
_concurrency_users = 0
_concurrency_before: Any = None


@contextmanager
def zarr_concurrency(chunks: int) -> Iterator[None]:
    """zarr's `async.concurrency` set to ``chunks`` while any block of this process
    runs (threads of one worker share zarr's configuration: the first block in sets
    it, a block that starts while others run keeps theirs, the last one out restores
    zarr's)."""
    global _concurrency_users, _concurrency_before
    with _concurrency_lock:
        if _concurrency_users == 0:
            _concurrency_before = zarr.config.get("async.concurrency")
            zarr.config.set({"async.concurrency": chunks})
        _concurrency_users += 1
    try:
        yield
    finally:
        with _concurrency_lock:
            _concurrency_users -= 1
            if _concurrency_users == 0:
                zarr.config.set({"async.concurrency": _concurrency_before})


def run_block_and_release(plan: ConversionPlan, level: int, block: Block) -> dict[str, Any]:
    """`run_block`, then the memory freed during it handed back to the system: a
    process that runs block after block (a pool worker) then holds one block's peak,
    not a heap that fragmentation grew over all of them (the pyramid benchmark's
    4x conversion peaked 0.05 GiB lower)."""
    try:
        return run_block(plan, level, block)
    finally:
        release_free_memory()


def _recorded_digests(marker: str, options: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The chunk digests a block's marker recorded (none for markers without them, or
    with another algorithm's: that level's checksum is then left out of the manifest)."""
    fs, path = filesystem(marker, options)
    try:
        recorded = json.loads(fs.cat_file(path) or b"{}")
    except ValueError:
        return {}
    if recorded.get("algorithm") != CHECKSUM_ALGORITHM:
        return {}
    return recorded.get("digests", {})
