"""Splitting arrays into chunk-aligned blocks: the unit of work of one task."""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

# A block is ((z0, z1), (y0, y1), (x0, x1)): half-open index ranges per axis.
Block = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def block_slices(block: Block) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in block)  # type: ignore[return-value]


def block_shape(block: Block) -> tuple[int, int, int]:
    return tuple(b - a for a, b in block)  # type: ignore[return-value]


def block_name(block: Block) -> str:
    """A stable name for a block, usable as a file or object name."""
    return "_".join(f"{a}-{b}" for a, b in block)


def aligned_blocks(shape: Sequence[int], block: Sequence[int]) -> list[Block]:
    """Blocks of ``block`` voxels (the last ones clipped) that tile ``shape`` in C order."""
    ranges = [[(start, min(start + b, n)) for start in range(0, n, b)] for n, b in zip(shape, block)]
    return [tuple(r) for r in itertools.product(*ranges)]  # type: ignore[misc]


def grow_block(
    shape: Sequence[int],
    unit: Sequence[int],
    bytes_per_voxel: float,
    budget_bytes: int,
) -> tuple[int, int, int]:
    """The largest block, a whole number of ``unit`` (chunk or shard) per axis, whose
    estimated memory (voxels x ``bytes_per_voxel``) stays within ``budget_bytes``.

    Grows x first, then y, then z, which matches C-order storage and the way
    sources stream (slices along z).  Never smaller than one unit.
    """
    counts = [1, 1, 1]
    limits = [math.ceil(n / u) for n, u in zip(shape, unit)]

    def cost(c: Sequence[int]) -> float:
        return math.prod(min(ci * ui, n) for ci, ui, n in zip(c, unit, shape)) * bytes_per_voxel

    for axis in (2, 1, 0):
        while counts[axis] < limits[axis]:
            trial = list(counts)
            trial[axis] = min(limits[axis], counts[axis] * 2)
            if cost(trial) > budget_bytes:
                # try one more unit rather than doubling
                trial[axis] = counts[axis] + 1
                if cost(trial) > budget_bytes:
                    break
            counts = trial
        if counts[axis] < limits[axis]:
            break
    return tuple(c * u for c, u in zip(counts, unit))  # type: ignore[return-value]


def block_voxels(block: Block) -> int:
    return math.prod(b - a for a, b in block)


def balanced_batches(blocks: Sequence[Block], count: int) -> list[list[Block]]:
    """``blocks`` dealt into at most ``count`` batches of nearly equal voxels, the
    largest blocks first (each to the lightest batch so far), heaviest batch first.

    Blocks at a volume's far edges are often much smaller than the others; handing
    them out last keeps workers from idling while one finishes a large block."""
    count = max(1, min(count, len(blocks)))
    bins: list[list[Block]] = [[] for _ in range(count)]
    loads = [0] * count
    for block in sorted(blocks, key=block_voxels, reverse=True):
        lightest = loads.index(min(loads))
        bins[lightest].append(block)
        loads[lightest] += block_voxels(block)
    order = sorted(range(count), key=lambda i: loads[i], reverse=True)
    return [bins[i] for i in order if bins[i]]


def iter_chunk_blocks(block: Block, chunks: Sequence[int]) -> Iterator[Block]:
    """The chunk-aligned sub-blocks of ``block`` (used to write chunk by chunk)."""
    ranges = [[(s, min(s + c, b)) for s in range(a, b, c)] for (a, b), c in zip(block, chunks)]
    yield from itertools.product(*ranges)  # type: ignore[misc]
