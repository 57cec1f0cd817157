"""Copy one block of the source volume into level 0 of the pyramid."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import zarr

from scalereg.blocks import Block, block_slices, block_voxels
from scalereg.errors import InputError
from scalereg.io import Source
from scalereg.omezarr.level_checksums import write_and_hash
from scalereg.pyramid.stream_block import stream_levels


def copy_source_block(source: Source, target: zarr.Array, block: Block) -> dict[str, Any]:
    """Read ``block`` from ``source`` and write it to ``target`` (same index space)."""
    data, stats = read_checked(source, block_slices(block))
    digests = write_and_hash(target, block, data.astype(target.dtype, copy=False))
    return {"voxels_read": int(data.size), "voxels_written": int(data.size), "digests": [digests], **stats}


def copy_and_downsample_block(
    source: Source, level0: zarr.Array, targets: Sequence[zarr.Array], block: Block, factors: Sequence[tuple[int, ...]], method: str
) -> dict[str, Any]:
    """Copy ``block`` to level 0 and write the blocks of ``targets`` (levels 1, 2, ...,
    each the one before downsampled by its ``factors``) that it covers, reading each
    source voxel of the block once (`scalereg.pyramid.stream_block`).

    The block is a column of whole write units along z (its start a multiple of the
    factors times each level's write unit, so it is exactly the footprint of their
    chunks), streamed in steps of level 0's write unit."""

    def read(region: tuple[slice, ...]) -> tuple[np.ndarray, dict[str, Any]]:
        data, stats = read_checked(source, region)
        return data.astype(level0.dtype, copy=False), stats

    step = (level0.shards or level0.chunks)[0]
    result = stream_levels(read, source.shape, block, list(zip(factors, targets)), method, step, copy_to=level0)
    return {**result, "voxels_written": block_voxels(block)}


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
