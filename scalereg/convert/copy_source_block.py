"""Copy one block of the source volume into level 0 of the pyramid."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from scalereg.blocks import Block, block_slices
from scalereg.errors import InputError
from scalereg.io import Source
from scalereg.omezarr.level_checksums import write_and_hash
from scalereg.pyramid.downsample_block import downsample_region, footprint, input_halo


def copy_source_block(source: Source, target: zarr.Array, block: Block) -> dict[str, Any]:
    """Read ``block`` from ``source`` and write it to ``target`` (same index space)."""
    data, stats = read_checked(source, block_slices(block))
    digests = write_and_hash(target, block, data.astype(target.dtype, copy=False))
    return {"voxels_read": int(data.size), "voxels_written": int(data.size), "digests": [digests], **stats}


def copy_and_downsample_block(
    source: Source, level0: zarr.Array, level1: zarr.Array, block: Block, factors: tuple[int, ...], method: str
) -> dict[str, Any]:
    """Copy ``block`` to level 0 and write the level-1 block it covers, reading each
    source voxel of the block once.

    The block is a column of whole write units along z (its start a multiple of
    ``factors`` times level 1's write unit, so it is exactly the footprint of level-1
    chunks), streamed in steps of level 0's write unit: each step reads its planes of
    the block's cross-section (plus the filter's halo across y and x), writes them to
    level 0, and computes every level-1 plane whose input is in memory.  The few
    planes a level-1 plane needs from the step before are carried over, so only the
    halo below the block's first step and above its last one is read twice (by the
    blocks next to it); reading the block as one region with its halo instead decodes
    every neighbouring source chunk for two planes of it.  Memory follows one step of
    the cross-section, not the block's length.  Level 1 gets the same voxels as if it
    were computed from level 0 on disk (the filter's arithmetic per output voxel does
    not depend on how its input arrives).
    """
    (z0, z1), (y0, y1), (x0, x1) = block
    halo = input_halo(method, factors)
    f, h = factors[0], halo[0]
    out_block = tuple((a // k, -(-b // k)) for (a, b), k in zip(block, factors))
    whole, _ = footprint(out_block, factors, halo, source.shape)  # type: ignore[arg-type]
    across = whole[1:]  # the cross-section read: y and x with their halo, clipped
    inner = (slice(y0 - across[0].start, y1 - across[0].start), slice(x0 - across[1].start, x1 - across[1].start))
    step = (level0.shards or level0.chunks)[0]
    unit1 = (level1.shards or level1.chunks)[0]
    n = source.shape[0]
    planes = _Planes()
    voxels_read, stats = 0, {}
    level0_digests: dict[str, str] = {}
    level1_digests: dict[str, str] = {}
    pending: list[np.ndarray] = []  # level-1 planes computed, not yet written
    written, computed = out_block[0][0], out_block[0][0]  # next level-1 plane to write, to compute
    if z0 > 0 and h:  # the halo below the block
        below, _ = _read_planes(source, max(z0 - h, 0), z0, across, level0.dtype)
        planes.append(below, max(z0 - h, 0))
        voxels_read += below.size
    # steps of level 0's write unit, then the halo above the block
    steps = [(s, min(s + step, z1), True) for s in range(z0, z1, step)] + ([(z1, min(z1 + h, n), False)] if z1 < n and h else [])
    for start, stop, own in steps:
        new, read_stats = _read_planes(source, start, stop, across, level0.dtype)
        voxels_read += new.size
        stats.update(read_stats)
        if own:
            part = ((start, stop), (y0, y1), (x0, x1))
            level0_digests.update(write_and_hash(level0, part, new[(slice(None), *inner)]))
        planes.append(new, start)
        # the level-1 planes whose input (footprint plus halo, or the volume's edge) is in memory
        ready = out_block[0][1] if planes.stop >= n else min(out_block[0][1], (planes.stop - h) // f)
        if ready > computed:
            pending.append(_downsample_planes(planes, (computed, ready), out_block, factors, halo, source.shape, method, level1.dtype))
            computed = ready
            planes.drop_before(f * computed - h)
        # write level 1 in whole write units (or the block's last planes)
        while computed - written >= unit1 or (computed == out_block[0][1] and computed > written):
            upto = min(written + unit1, computed)
            stacked = np.concatenate(pending) if len(pending) > 1 else pending[0]
            part1 = ((written, upto), *out_block[1:])
            level1_digests.update(write_and_hash(level1, part1, stacked[: upto - written]))  # type: ignore[arg-type]
            pending = [stacked[upto - written :]] if upto < computed else []
            written = upto
    assert written == out_block[0][1], (written, out_block)
    voxels = (z1 - z0) * (y1 - y0) * (x1 - x0)
    return {"voxels_read": voxels_read, "voxels_written": voxels, "digests": [level0_digests, level1_digests], **stats}


class _Planes:
    """Consecutive source planes ``start:stop`` of a block's cross-section in memory:
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


def _read_planes(source: Source, start: int, stop: int, across: tuple[slice, ...], dtype: np.dtype) -> tuple[np.ndarray, dict[str, Any]]:
    data, stats = read_checked(source, (slice(start, stop), *across))
    return data.astype(dtype, copy=False), stats


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
    """Level-1 planes ``outputs`` of ``out_block``'s cross-section, from ``planes``.

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


def read_checked(source: Source, region: tuple[slice, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """``source.read_with_stats(region)``, refusing short reads and non-finite voxels.

    NaN and Inf would spread through every filter downstream, so they stop the
    conversion with their position.
    """
    data, stats = source.read_with_stats(region)  # type: ignore[arg-type]
    expected = tuple(s.stop - s.start for s in region)
    if data.shape != expected:
        raise InputError(source.uri, f"reader returned shape {data.shape} for region {region}; the file may be truncated")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            where = tuple(int(i) + s.start for i, s in zip(np.argwhere(bad)[0], region))
            block = tuple((s.start, s.stop) for s in region)
            raise InputError(source.uri, f"contains {int(bad.sum())} NaN/Inf voxels in block {block} (first at z, y, x = {where})")
    return data, stats
