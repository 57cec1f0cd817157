"""Copy one block of the source volume into level 0 of the pyramid."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from scalereg.blocks import Block, block_shape, block_slices
from scalereg.errors import InputError
from scalereg.io import Source


def copy_source_block(source: Source, target: zarr.Array, block: Block) -> dict[str, Any]:
    """Read ``block`` from ``source`` and write it to ``target`` (same index space).

    Non-finite voxels (NaN, Inf) are bad input: they would spread through every
    filter downstream, so they stop the conversion with their position.
    """
    data = source.read(block_slices(block))
    if data.shape != block_shape(block):
        raise InputError(source.uri, f"reader returned shape {data.shape} for block {block}; the file may be truncated")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            where = tuple(int(i) + b[0] for i, b in zip(np.argwhere(bad)[0], block))
            raise InputError(source.uri, f"contains {int(bad.sum())} NaN/Inf voxels in block {block} (first at z, y, x = {where})")
    target[block_slices(block)] = data.astype(target.dtype, copy=False)
    return {"voxels_read": int(data.size), "voxels_written": int(data.size)}
