"""Decide, before anything runs, what converting a volume will write and in which blocks."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from scalereg.blocks import Block, aligned_blocks, grow_block
from scalereg.errors import InputError, MemoryBudgetError
from scalereg.geometry import Geometry, parse_spacing, parse_unit
from scalereg.io.check_header import check_header
from scalereg.io import Source, open_source
from scalereg.omezarr.pyramid_layout import NgffVersion, PyramidLayout, pyramid_layout
from scalereg.orientation import parse_orientation
from scalereg.pyramid.downsample_block import bytes_per_output_voxel, input_halo, method_for
from scalereg.pyramid.level_schedule import level_schedule
from scalereg.output_rules import check_apart
from scalereg.storage import is_remote, output_uri
from scalereg.units import format_bytes, parse_bytes

DEFAULT_MEMORY_BUDGET = "512MiB"
# Streamed levels are cut into at least this many blocks when they have the units
# (see `_streamed_blocks`): work for a few workers even on the coarser levels.
MIN_BLOCKS = 8
# Copying a block holds the source's read buffer, the array handed to zarr and
# zarr's encode buffers: about three copies of the block.
COPY_BYTES_PER_VOXEL_FACTOR = 3
# Chunks a block task has zarr decode or encode at once (its `async.concurrency` while
# the block runs) when the source and the output are local: more only hold more
# buffers (the pyramid benchmark's conversions took the same time with 4 as with
# zarr's 10, and ~75 MiB less per process).  With an object store zarr's own setting
# stands: requests in flight hide its latency.
LOCAL_CHUNKS_IN_FLIGHT = 4


@dataclass(frozen=True)
class LevelPlan:
    index: int
    # "copy" (level 0 from the source), "copy+downsample" (level 0 and level 1 from
    # one read of the source, and level 2 too where it fits), "fused" (level 1 or 2,
    # written by level 0's tasks) or "downsample" (from the level below on disk)
    kind: str
    blocks: tuple[Block, ...]
    block_shape: tuple[int, int, int]
    bytes_per_task: int


@dataclass(frozen=True)
class ConversionPlan:
    """What a conversion will do: the source, the output layout, the blocks of every level."""

    source: Source
    output: str
    layout: PyramidLayout
    method: str
    levels: tuple[LevelPlan, ...]
    memory_budget: int
    fingerprint: str
    notes: tuple[str, ...] = ()
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    # zarr's `async.concurrency` for the blocks (see LOCAL_CHUNKS_IN_FLIGHT)
    chunks_in_flight: int = 10

    @property
    def block_count(self) -> int:
        """Blocks over all levels (a fused level has none of its own)."""
        return sum(len(level.blocks) for level in self.levels)

    def for_tasks(self) -> "ConversionPlan":
        """This plan without its block lists: what each block task needs to be sent."""
        return replace(self, levels=tuple(replace(level, blocks=()) for level in self.levels))

    def summary(self) -> list[dict[str, Any]]:
        """One row per level: what a person wants to see before the run."""
        rows = []
        for level, spec in zip(self.levels, self.layout.levels):
            rows.append(
                {
                    "level": level.index,
                    "shape": "x".join(map(str, spec.shape)),
                    "spacing": "x".join(f"{s:g}" for s in spec.scale) + f" {self.layout.geometry.unit}",
                    "chunks": "x".join(map(str, spec.chunks)),
                    "bytes": math.prod(spec.shape) * np.dtype(self.layout.dtype).itemsize,
                    "tasks": len(level.blocks),
                    "memory_per_task": format_bytes(level.bytes_per_task),
                }
            )
        return rows


def resolve_geometry(
    source: Source,
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
    orientation: str | None = None,
    origin: Sequence[float] | None = None,
) -> Geometry:
    """The source's own spatial metadata with the user's overrides applied.

    A source without spacing (TIFF) and none given is an error, not a guess.
    """
    if spacing is None and source.spacing is None:
        raise InputError(source.uri, "the file stores no voxel spacing; give it (e.g. --spacing 4 1.8 1.8 --unit micrometer)")
    if unit is None and source.unit_unknown:
        raise InputError(source.uri, f"{source.unit_unknown.removeprefix(source.uri + ': ')}; give the unit (--unit millimeter, micrometer, ...)")
    resolved_unit = parse_unit(unit, "unit") if unit is not None else (source.unit or "micrometer")
    given_spacing = parse_spacing(spacing, "spacing") if spacing is not None else None
    given_orientation = parse_orientation(orientation) if orientation is not None else None
    try:
        return Geometry(
            spacing=given_spacing or source.spacing,  # type: ignore[arg-type]
            origin=tuple(origin) if origin is not None else (source.origin or (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
            unit=resolved_unit,
            orientation=given_orientation or source.orientation,
            notes=source.notes,
        )
    except InputError as error:  # a value no image has: the parameter's, if it was given, else the file's
        given = {"spacing": spacing, "origin": origin, "unit": unit}
        if given.get(error.subject) is not None:
            raise
        raise InputError(source.uri, f"{error.subject}: {error.problem}") from None


def plan_conversion(
    source: str | Source,
    output: str,
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
    orientation: str | None = None,
    origin: Sequence[float] | None = None,
    ngff_version: NgffVersion = "0.5",
    chunks: int | Sequence[int] = 128,
    shards: int | Sequence[int] | None = None,
    labels: bool = False,
    min_size: int = 32,
    max_levels: int | None = None,
    memory_budget: str | int = DEFAULT_MEMORY_BUDGET,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
) -> ConversionPlan:
    """Plan the conversion of ``source`` into an OME-Zarr pyramid at ``output``.

    Opens only the source's header.  Raises InputError for bad input and
    MemoryBudgetError when one chunk of work would not fit the budget.
    """
    src = source if isinstance(source, Source) else open_source(str(source), storage_options=source_storage_options)
    output = output_uri(output)
    check_apart(output, src.inputs())
    check_header(src.uri, src.shape, src.dtype)  # every reader checked its own; this is for sources given as objects
    if labels and np.issubdtype(src.dtype, np.floating):
        raise InputError(src.uri, f"a label image must have an integer type, not {src.dtype}")
    dtype = np.dtype(src.dtype)
    if dtype == np.bool_:
        if not labels:
            raise InputError(src.uri, "voxels are boolean (a mask): convert it as labels (--labels), which stores it as uint8 0/1")
        dtype = np.dtype(np.uint8)
    geometry = resolve_geometry(src, spacing, unit, orientation, origin)
    factors = level_schedule(src.shape, geometry.spacing, min_size=min_size, max_levels=max_levels)
    name = os.path.basename(str(output).rstrip("/")).split(".")[0] or "image"
    layout = pyramid_layout(
        src.shape, dtype, geometry, factors, chunks=chunks, shards=shards, ngff_version=ngff_version, labels=labels, name=name
    )
    method = method_for(labels)
    budget = parse_bytes(memory_budget)
    itemsize = np.dtype(layout.dtype).itemsize
    in_flight = chunks_in_flight(src.uri, output)
    levels = _fused_first_levels(layout, method, itemsize, budget, src, in_flight)
    for index, level in enumerate(layout.levels):
        if index < len(levels):
            continue
        if index == 0:
            per_voxel = COPY_BYTES_PER_VOXEL_FACTOR * itemsize + src.working_bytes_per_voxel
            unit_shape = level.shards or level.chunks  # tasks never share a chunk or a shard
            levels.append(_level_plan(index, "copy", level.shape, unit_shape, per_voxel, budget - src.working_bytes_fixed))
        else:
            levels.append(_downsample_level(layout, index, method, itemsize, budget, in_flight))
    fingerprint = _fingerprint(src, layout, method)
    return ConversionPlan(
        source=src,
        output=output,
        layout=layout,
        method=method,
        levels=tuple(levels),
        memory_budget=budget,
        fingerprint=fingerprint,
        notes=tuple(geometry.notes),
        storage_options=storage_options,
        chunks_in_flight=in_flight,
    )


def _level_plan(index: int, kind: str, shape: tuple[int, ...], unit_shape: tuple[int, ...], per_voxel: float, budget: int) -> LevelPlan:
    unit_bytes = math.prod(unit_shape) * per_voxel
    if unit_bytes > budget:
        raise MemoryBudgetError(
            "memory-budget",
            f"{format_bytes(budget)} is too small: one {'x'.join(map(str, unit_shape))} block of level {index} "
            f"needs about {format_bytes(unit_bytes)}; raise the budget or use smaller --chunks",
        )
    block = grow_block(shape, unit_shape, per_voxel, budget)
    return LevelPlan(
        index=index,
        kind=kind,
        blocks=tuple(aligned_blocks(shape, block)),
        block_shape=block,
        bytes_per_task=int(math.prod(min(b, n) for b, n in zip(block, shape)) * per_voxel),
    )


def _fused_first_levels(layout: PyramidLayout, method: str, itemsize: int, budget: int, source: Source, in_flight: int) -> list[LevelPlan]:
    """Level 0 and level 1, and level 2 where it fits, from one read of the source,
    when a step fits the budget.

    Level-0 blocks are then whole multiples of both level 0's write unit and (times
    the factors) level 1's, so every task writes its own chunks of both levels,
    streamed along z in steps of level 0's write unit
    (`scalereg.pyramid.stream_block`); see `_streamed_blocks` for their shape.

    Level 2 too where a step of such blocks fits the budget: they must then be whole
    multiples of its write unit times the factors (512 voxels across for 128-voxel
    chunks halved twice), and level 1's planes, computed a little beyond the block for
    level 2's filter, go on to it as they come.  Reading level 1 back from disk for
    level 2 instead decoded each of its chunks about twice (the halos of its blocks)
    and cost most of level 1's write time again.
    """
    if len(layout.levels) < 2:
        return []
    level0, level1 = layout.levels[0], layout.levels[1]
    unit0 = level0.shards or level0.chunks
    unit1 = level1.shards or level1.chunks
    unit = tuple(math.lcm(u0, f * u1) for u0, f, u1 in zip(unit0, level1.factors, unit1))
    # one step: the planes read, the block handed to zarr, and the downsampling's
    # working set (the step itself is its input)
    per_voxel = itemsize + bytes_per_output_voxel(itemsize, level1.factors, method) / math.prod(level1.factors)
    per_voxel += source.working_bytes_per_voxel
    fixed = source.working_bytes_fixed + _chunks_in_flight_bytes(source.shape, source.preferred_block, source.dtype.itemsize, unit0, itemsize, in_flight)
    halo = input_halo(method, level1.factors)
    streamed = _streamed_blocks(level0.shape, unit, unit0[0], halo, per_voxel, fixed, budget, itemsize)
    if streamed is None:
        return []
    if len(layout.levels) > 2:
        three = _fused_level_two(layout, method, itemsize, budget, unit, unit0[0], per_voxel, fixed, halo)
        if three is not None:
            block, memory = three
            first = LevelPlan(index=0, kind="copy+downsample", blocks=tuple(aligned_blocks(level0.shape, block)), block_shape=block, bytes_per_task=memory)
            return [first, *(LevelPlan(index=index, kind="fused", blocks=(), block_shape=block, bytes_per_task=0) for index in (1, 2))]
    block, memory = streamed
    first = LevelPlan(index=0, kind="copy+downsample", blocks=tuple(aligned_blocks(level0.shape, block)), block_shape=block, bytes_per_task=memory)
    return [first, LevelPlan(index=1, kind="fused", blocks=(), block_shape=first.block_shape, bytes_per_task=0)]


def _fused_level_two(
    layout: PyramidLayout,
    method: str,
    itemsize: int,
    budget: int,
    unit: tuple[int, ...],
    step: int,
    per_voxel: float,
    fixed: int,
    halo1: tuple[int, ...],
) -> tuple[tuple[int, int, int], int] | None:
    """The shape and estimated memory of level-0 blocks that write levels 0, 1 and 2
    (see `_fused_first_levels`), streamed in steps of ``step`` planes; None when a
    step does not fit the budget.  ``unit``, ``per_voxel``, ``fixed``, ``halo1``: those
    of blocks that write levels 0 and 1."""
    level1, level2 = layout.levels[1], layout.levels[2]
    unit2 = level2.shards or level2.chunks
    total = tuple(f1 * f2 for f1, f2 in zip(level1.factors, level2.factors))
    block_unit = tuple(math.lcm(u, t * u2) for u, t, u2 in zip(unit, total, unit2))
    # level 0 read around a block: level 1's halo plus level 2's, in level-0 voxels
    halo = tuple(h1 + f1 * h2 for h1, f1, h2 in zip(halo1, level1.factors, input_halo(method, level2.factors)))
    # level 2's filter works on level 1's planes: its share per level-0 voxel
    per_voxel += bytes_per_output_voxel(itemsize, level2.factors, method) / math.prod(total)
    # one unit across (512 x 512 for 128-voxel chunks): wider steps only hold more
    # memory (the halo's share of a step is already small), narrower blocks spread
    # better over workers
    return _streamed_blocks(layout.levels[0].shape, block_unit, step, halo, per_voxel, fixed, budget, itemsize, one_unit_across=True)


def _downsample_level(layout: PyramidLayout, index: int, method: str, itemsize: int, budget: int, in_flight: int) -> LevelPlan:
    """Level ``index`` from the level below on disk, streamed along z in steps of the
    level below's write unit; blocks of whole write units of the level written."""
    level, below = layout.levels[index], layout.levels[index - 1]
    unit_out = level.shards or level.chunks  # tasks never share a chunk or a shard
    unit_below = below.shards or below.chunks
    per_output = bytes_per_output_voxel(itemsize, level.factors, method)
    unit_in = tuple(f * u for f, u in zip(level.factors, unit_out))
    fixed = _chunks_in_flight_bytes(below.shape, unit_below, itemsize, unit_out, itemsize, in_flight)
    per_voxel = itemsize + per_output / math.prod(level.factors)
    streamed = _streamed_blocks(below.shape, unit_in, unit_below[0], input_halo(method, level.factors), per_voxel, fixed, budget, itemsize)
    if streamed is None:  # not even one step of one unit: blocks of whole units, as small as they come
        return _level_plan(index, "downsample", level.shape, unit_out, per_output, budget)
    block_in, memory = streamed
    block = tuple(b // f for b, f in zip(block_in, level.factors))
    return LevelPlan(index=index, kind="downsample", blocks=tuple(aligned_blocks(level.shape, block)), block_shape=block, bytes_per_task=memory)  # type: ignore[arg-type]


def _streamed_blocks(
    shape: tuple[int, ...],
    unit: tuple[int, ...],
    step: int,
    halo: tuple[int, ...],
    per_voxel: float,
    fixed: int,
    budget: int,
    itemsize: int,
    one_unit_across: bool = False,
) -> tuple[tuple[int, int, int], int] | None:
    """The shape (input index space) of blocks streamed along z in steps of ``step``
    planes, and their estimated memory; None when one step of one ``unit`` does not fit.

    The budget, less the ``fixed`` part, sets the cross-section of one step (x grown
    first, then y, in whole units; one unit with ``one_unit_across``); the block's
    length along z is then about a budget's worth of input voxels, in whole units, and
    short enough for the level to have ``MIN_BLOCKS`` blocks: longer blocks read less
    of their neighbours' planes again (one step at each end), shorter ones spread
    better over workers."""
    step_unit = (step, unit[1], unit[2])
    # the halo makes the planes read a little more than the step
    per_voxel *= math.prod((u + 2 * h) / u for u, h in zip(step_unit, halo))
    room = budget - fixed
    if math.prod(step_unit) * per_voxel > room:
        return None
    cross = step_unit if one_unit_across else grow_block((min(step, shape[0]), shape[1], shape[2]), step_unit, per_voxel, room)
    plane_bytes = min(cross[1], shape[1]) * min(cross[2], shape[2]) * itemsize
    length = max(1, budget // (plane_bytes * unit[0])) * unit[0]
    # but at least MIN_BLOCKS blocks where the level has that many units, so that a
    # level whose cross-section fits one step still keeps several workers busy
    across = math.ceil(shape[1] / cross[1]) * math.ceil(shape[2] / cross[2])
    along = math.ceil(MIN_BLOCKS / across)
    length = min(length, max(1, math.ceil(shape[0] / along / unit[0])) * unit[0])
    memory = int(min(step, shape[0]) * min(cross[1], shape[1]) * min(cross[2], shape[2]) * per_voxel) + fixed
    return (length, cross[1], cross[2]), memory


def chunks_in_flight(source: str, output: str) -> int:
    """zarr's `async.concurrency` for a conversion's blocks: at most
    LOCAL_CHUNKS_IN_FLIGHT when the source and the output are local, else zarr's."""
    import zarr

    configured = int(zarr.config.get("async.concurrency") or 10)
    return configured if is_remote(source) or is_remote(output) else min(configured, LOCAL_CHUNKS_IN_FLIGHT)


def _chunks_in_flight_bytes(
    shape: Sequence[int], chunks: Sequence[int] | None, itemsize: int, write_unit: Sequence[int], write_itemsize: int, concurrency: int
) -> int:
    """Memory of the input chunks (of an input of ``shape``; none when it is not
    chunked) zarr decodes and the output chunks (or shards) it encodes at the same
    time, ``concurrency`` of each (`python benchmarks/block_memory.py`: ~80 MiB above a
    step's share for 128^3 uint16 chunks, ten in flight)."""
    decoded = 0
    if chunks:
        count = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks))
        decoded = min(concurrency, count) * math.prod(chunks) * itemsize
    return decoded + concurrency * math.prod(write_unit) * write_itemsize


def _fingerprint(source: Source, layout: PyramidLayout, method: str) -> str:
    """Identity of a conversion: the same source file and the same layout give the same value."""
    identity: dict[str, Any] = {
        "source": source.uri,
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "layout": {
            "dtype": layout.dtype,
            "ngff": layout.ngff_version,
            "geometry": [layout.geometry.spacing, layout.geometry.origin, layout.geometry.unit, layout.geometry.orientation],
            "levels": [[l.shape, l.chunks, l.shards] for l in layout.levels],
        },
        "method": method,
        "source_identity": source.identity(),
    }
    if not is_remote(source.uri) and os.path.exists(source.uri):
        stat = os.stat(source.uri)
        identity["stat"] = [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:16]
