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
    """Copy ``block`` to level 0 and write the level-1 block it covers, from one read.

    The block's start is a multiple of ``factors``, so it is exactly the footprint of
    a level-1 block; the filter's halo is read from the source too.  Level 1 gets the
    same voxels as if it were computed from level 0 on disk, without decompressing
    level 0 (and its neighbours' chunks, for the halo) again.
    """
    out_block = tuple((a // f, -(-b // f)) for (a, b), f in zip(block, factors))
    read, pad = footprint(out_block, factors, input_halo(method, factors), source.shape)  # type: ignore[arg-type]
    region, stats = read_checked(source, read)
    inner = tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(block, read))
    digests = [
        write_and_hash(level0, block, region[inner].astype(level0.dtype, copy=False)),
        write_and_hash(level1, out_block, downsample_region(region.astype(level0.dtype, copy=False), pad, factors, method, level1.dtype)),  # type: ignore[arg-type]
    ]
    return {"voxels_read": int(region.size), "voxels_written": int(region[inner].size), "digests": digests, **stats}


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
