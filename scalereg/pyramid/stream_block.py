"""Write the next pyramid levels of a block by streaming its input along z.

A block task of a level-0 conversion (level 1, and level 2 where the planner fuses
it, from the source, level 0 copied on the way) or of a coarser level (from the
level below on disk) reads its input one step of planes at a time, across the
block's whole cross-section plus the filters' halo in y and x.  The planes the next
output plane needs from an earlier step are carried over, so each input plane of
the block is read once; only the halo below its first step and above its last one
is read again by the blocks next to it.  Reading the block as one region with its
halo on every side instead decodes every neighbouring chunk for two planes of it
(eight chunks read per chunk used, for blocks of 2 x 2 x 2 chunks).  Memory follows
one step of the cross-section, not the block's length.

Levels are chained: each level's planes, as they are computed, are written (the
block's own part, in whole write units) and handed to the next level's filter.  A
level that feeds another is computed a little beyond the block's own part (the next
filter's halo), which the neighbouring block computes too and writes.

The output gets the same voxels as one whole-volume computation: a voxel's value
depends only on its input, not on how the input arrived (the filter's arithmetic per
output voxel is fixed).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import zarr

from scalereg.blocks import Block, block_voxels
from scalereg.omezarr.level_checksums import write_and_hash
from scalereg.pyramid.downsample_block import downsample_region, footprint, input_halo

# read(region) -> (voxels in the output's dtype, stats to report)
Reader = Callable[[tuple[slice, ...]], tuple[np.ndarray, dict[str, Any]]]


def stream_block(
    read: Reader,
    shape: tuple[int, ...],
    block: Block,
    factors: tuple[int, ...],
    method: str,
    target: zarr.Array,
    step: int,
    copy_to: zarr.Array | None = None,
) -> dict[str, Any]:
    """Write the block of ``target`` whose footprint is ``block`` (see `stream_levels`)."""
    return stream_levels(read, shape, block, [(factors, target)], method, step, copy_to)


def stream_levels(
    read: Reader,
    shape: tuple[int, ...],
    block: Block,
    levels: Sequence[tuple[tuple[int, ...], zarr.Array]],
    method: str,
    step: int,
    copy_to: zarr.Array | None = None,
) -> dict[str, Any]:
    """Write, for each ``(factors, target)`` of ``levels`` in turn (each level the one
    before downsampled by its factors), the block whose footprint is ``block`` (input
    index space; its start a multiple of the levels' factors times their write units),
    from the input of ``shape`` that ``read`` returns, in steps of ``step`` planes
    along z (with ``copy_to``: its write unit, and each step is also written there,
    unchanged).

    Returns the voxels read and the chunk digests of ``copy_to`` (when given) and of
    each level."""
    stages, sinks = _chain(shape, block, levels, method)
    read_block = stages[0].input_region
    (z0, z1) = block[0]
    across = read_block[1:]  # the cross-section read: y and x with the halos, clipped
    copy = _ZarrSink(copy_to, block, (read_block[0][0], across[0][0], across[1][0])) if copy_to is not None else None
    first, last = read_block[0]
    # the halo below the block, steps of `step` planes, then the halo above it
    reads = ([(first, z0)] if first < z0 else []) + [(s, min(s + step, z1)) for s in range(z0, z1, step)] + ([(z1, last)] if last > z1 else [])
    voxels_read, stats = 0, {}
    for start, stop in reads:
        new, read_stats = read((slice(start, stop), *(slice(a, b) for a, b in across)))
        voxels_read += new.size
        stats.update(read_stats)
        if copy is not None:
            copy.push(start, new)
        planes: tuple[int, np.ndarray] | None = (start, new)
        for stage, sink in zip(stages, sinks):
            planes = stage.push(*planes)
            if planes is None:
                break
            sink.push(*planes)
        # before the next read: what the stages and writers still need, they hold
        # (a few planes); holding the step here too would keep two steps in memory
        del new, planes
    for sink in ([copy] if copy is not None else []) + sinks:
        sink.check_done()
    digests = [sink.digests for sink in ([copy] if copy is not None else []) + sinks]
    return {"voxels_read": voxels_read, "digests": digests, **stats}


def _chain(shape: tuple[int, ...], block: Block, levels: Sequence[tuple[tuple[int, ...], zarr.Array]], method: str) -> tuple[list["_Stage"], list["_ZarrSink"]]:
    """The filters and writers of ``levels``: each level's own block (``block`` divided
    by the factors so far, rounded out at the volume's end) and the region computed,
    its own block grown by what the next level's filter reads (its halo), clipped."""
    owns: list[Block] = []
    shapes = [tuple(shape)] + [tuple(target.shape) for _, target in levels]
    current = block
    for factors, _ in levels:
        current = tuple((a // k, -(-b // k)) for (a, b), k in zip(current, factors))  # type: ignore[assignment]
        owns.append(current)
    computes: list[Block] = [owns[-1]]
    for index in range(len(levels) - 1, 0, -1):  # what level `index` reads of the level below
        factors = levels[index][0]
        region, _ = footprint(computes[0], factors, input_halo(method, factors), shapes[index])
        below = tuple((s.start, s.stop) for s in region)
        # blocks start at multiples of the factors: a level's own block is the
        # footprint of the next one's, which its halo only grows
        assert all(a <= o0 and o1 <= b for (a, b), (o0, o1) in zip(below, owns[index - 1])), (below, owns[index - 1])
        computes.insert(0, below)  # type: ignore[arg-type]
    stages = [_Stage(shapes[index], compute, factors, method, target.dtype) for index, ((factors, target), compute) in enumerate(zip(levels, computes))]
    sinks = [_ZarrSink(target, own, tuple(a for a, _ in compute)) for (_, target), own, compute in zip(levels, owns, computes)]
    return stages, sinks


class _Stage:
    """One level's filter: input planes in (consecutive, across the region it reads),
    its output planes out as soon as their input is in memory."""

    def __init__(self, in_shape: tuple[int, ...], compute: Block, factors: tuple[int, ...], method: str, dtype: np.dtype) -> None:
        self.in_shape, self.compute, self.factors, self.method, self.dtype = in_shape, compute, factors, method, dtype
        self.halo = input_halo(method, factors)
        region, _ = footprint(compute, factors, self.halo, in_shape)
        self.input_region = tuple((s.start, s.stop) for s in region)
        self.planes = _Planes()
        self.computed = compute[0][0]  # next output plane to compute

    def push(self, start: int, planes: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Take input planes ``start:start + len(planes)``; return the output planes that
        became computable (their first index and voxels), or None."""
        self.planes.append(planes, start)
        f, h = self.factors[0], self.halo[0]
        end = self.compute[0][1]
        ready = end if self.planes.stop >= self.input_region[0][1] else min(end, (self.planes.stop - h) // f)
        if ready <= self.computed:
            return None
        first = self.computed
        out = _downsample_planes(self.planes, (first, ready), self.compute, self.factors, self.halo, self.in_shape, self.method, self.dtype)
        self.computed = ready
        self.planes.drop_before(f * ready - h)
        return first, out


class _ZarrSink:
    """Writes the planes of ``own`` (a block of ``target``) as they arrive, in whole
    write units along z (or the block's last planes); the arriving arrays' voxel
    [0, 0, 0] is ``target``'s voxel ``origin`` and they may reach beyond ``own``."""

    def __init__(self, target: zarr.Array, own: Block, origin: tuple[int, ...]) -> None:
        self.target, self.own = target, own
        self.inner = tuple(slice(a - o, b - o) for (a, b), o in zip(own[1:], origin[1:]))
        self.unit = (target.shards or target.chunks)[0]
        self.written = self.received = own[0][0]
        self.pending: list[np.ndarray] = []
        self.digests: dict[str, str] = {}

    def push(self, start: int, planes: np.ndarray) -> None:
        a, b = max(start, self.received), min(start + len(planes), self.own[0][1])
        if b <= a:
            return
        assert a == self.received, (start, self.received)
        self.pending.append(planes[(slice(a - start, b - start), *self.inner)])
        self.received = b
        while self.received - self.written >= self.unit or (self.received == self.own[0][1] and self.received > self.written):
            upto = min(self.written + self.unit, self.received)
            stacked = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            part = ((self.written, upto), *self.own[1:])
            self.digests.update(write_and_hash(self.target, part, stacked[: upto - self.written]))  # type: ignore[arg-type]
            self.pending = [stacked[upto - self.written :]] if upto < self.received else []
            self.written = upto

    def check_done(self) -> None:
        assert self.written == self.own[0][1], (self.written, self.own)


class _Planes:
    """Consecutive input planes ``start:stop`` of a block's cross-section in memory:
    a short tail carried over from earlier steps and the step just read, kept
    apart (joining them would copy the whole step)."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, np.ndarray]] = []

    @property
    def stop(self) -> int:
        return self.parts[-1][0] + len(self.parts[-1][1]) if self.parts else 0

    def append(self, planes: np.ndarray, start: int) -> None:
        assert not self.parts or start == self.stop, (start, self.stop)
        if len(planes):
            self.parts.append((start, planes))

    def drop_before(self, plane: int) -> None:
        kept = []
        for start, planes in self.parts:
            if start + len(planes) <= plane:
                continue
            # a few planes of a step: copied, so that the step's array can go
            kept.append((start, planes) if start >= plane else (plane, planes[plane - start :].copy()))
        self.parts = kept

    def get(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop``: a view when one part holds them, else a joined copy."""
        pieces = [planes[max(start - first, 0) : stop - first] for first, planes in self.parts if first < stop and first + len(planes) > start]
        assert sum(len(p) for p in pieces) == stop - start, (start, stop, [(a, len(b)) for a, b in self.parts])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _downsample_planes(
    planes: _Planes,
    outputs: tuple[int, int],
    out_block: Block,
    factors: tuple[int, ...],
    halo: tuple[int, ...],
    shape: tuple[int, ...],
    method: str,
    dtype: np.dtype,
) -> np.ndarray:
    """Output planes ``outputs`` of ``out_block``'s cross-section, from ``planes``.

    The planes whose input straddles the carried-over tail and the new step come from
    a short joined copy; the rest from views of the step."""
    first, last = outputs
    f, h = factors[0], halo[0]
    # outputs from `split` on read only the newest part
    newest = planes.parts[-1][0]
    split = min(max(first, -(-(newest + h) // f)), last)
    results = []
    for a, b in ((first, split), (split, last)):
        if b <= a:
            continue
        read, pad = footprint(((a, b), *out_block[1:]), factors, halo, shape)  # type: ignore[arg-type]
        region = planes.get(read[0].start, read[0].stop)
        results.append(downsample_region(region, pad, factors, method, dtype))
    return results[0] if len(results) == 1 else np.concatenate(results)


def stream_downsample_block(source: zarr.Array, target: zarr.Array, block: Block, factors: tuple[int, ...], method: str) -> dict[str, Any]:
    """Write ``block`` (index ranges of ``target``) from ``source``, the level below on
    disk, streamed along z in steps of the source's write unit."""
    footprint_block = tuple((f * a, min(f * b, n)) for (a, b), f, n in zip(block, factors, source.shape))
    step = (source.shards or source.chunks)[0]

    def read(region: tuple[slice, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.asarray(source[region]), {}

    result = stream_block(read, source.shape, footprint_block, factors, method, target, step)  # type: ignore[arg-type]
    return {**result, "voxels_written": block_voxels(block)}
