"""Write the next pyramid level of a block by streaming its input along z.

A block task of a level-0 conversion (level 1 from the source, level 0 copied on the
way) or of a coarser level (from the level below on disk) reads its input one step
of planes at a time, across the block's whole cross-section plus the filter's halo
in y and x.  The planes the next output plane needs from an earlier step are carried
over, so each input plane of the block is read once; only the halo below its first
step and above its last one is read again by the blocks next to it.  Reading the
block as one region with its halo on every side instead decodes every neighbouring
chunk for two planes of it (eight chunks read per chunk used, for blocks of 2 x 2 x 2
chunks).  Memory follows one step of the cross-section, not the block's length.

The output gets the same voxels as one whole-volume computation: a voxel's value
depends only on its input, not on how the input arrived (the filter's arithmetic per
output voxel is fixed).
"""

from __future__ import annotations

from typing import Any, Callable

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
    """Write the block of ``target`` whose footprint is ``block`` (input index space,
    its start a multiple of ``factors`` times ``target``'s write unit) from the input
    of ``shape`` that ``read`` returns, in steps of ``step`` planes along z (with
    ``copy_to``: its write unit, and each step is also written there, unchanged).

    Returns the voxels read and written and the chunk digests of ``copy_to`` (when
    given) and ``target``."""
    (z0, z1), (y0, y1), (x0, x1) = block
    halo = input_halo(method, factors)
    f, h = factors[0], halo[0]
    out_block = tuple((a // k, -(-b // k)) for (a, b), k in zip(block, factors))
    whole, _ = footprint(out_block, factors, halo, shape)  # type: ignore[arg-type]
    across = whole[1:]  # the cross-section read: y and x with their halo, clipped
    inner = (slice(y0 - across[0].start, y1 - across[0].start), slice(x0 - across[1].start, x1 - across[1].start))
    unit = (target.shards or target.chunks)[0]
    n = shape[0]
    planes = _Planes()
    voxels_read, stats = 0, {}
    copied: dict[str, str] = {}
    downsampled: dict[str, str] = {}
    pending: list[np.ndarray] = []  # output planes computed, not yet written
    written = computed = out_block[0][0]  # next output plane to write, to compute
    if z0 > 0 and h:  # the halo below the block
        below, _ = read((slice(max(z0 - h, 0), z0), *across))
        planes.append(below, max(z0 - h, 0))
        voxels_read += below.size
    # steps of `step` planes, then the halo above the block
    steps = [(s, min(s + step, z1), True) for s in range(z0, z1, step)] + ([(z1, min(z1 + h, n), False)] if z1 < n and h else [])
    for start, stop, own in steps:
        new, read_stats = read((slice(start, stop), *across))
        voxels_read += new.size
        stats.update(read_stats)
        if own and copy_to is not None:
            copied.update(write_and_hash(copy_to, ((start, stop), (y0, y1), (x0, x1)), new[(slice(None), *inner)]))
        planes.append(new, start)
        # the output planes whose input (footprint plus halo, or the volume's edge) is in memory
        ready = out_block[0][1] if planes.stop >= n else min(out_block[0][1], (planes.stop - h) // f)
        if ready > computed:
            pending.append(_downsample_planes(planes, (computed, ready), out_block, factors, halo, shape, method, target.dtype))
            computed = ready
            planes.drop_before(f * computed - h)
        # write the output in whole write units (or the block's last planes)
        while computed - written >= unit or (computed == out_block[0][1] and computed > written):
            upto = min(written + unit, computed)
            stacked = np.concatenate(pending) if len(pending) > 1 else pending[0]
            part = ((written, upto), *out_block[1:])
            downsampled.update(write_and_hash(target, part, stacked[: upto - written]))  # type: ignore[arg-type]
            pending = [stacked[upto - written :]] if upto < computed else []
            written = upto
    assert written == out_block[0][1], (written, out_block)
    digests = ([copied] if copy_to is not None else []) + [downsampled]
    return {"voxels_read": voxels_read, "digests": digests, **stats}


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
