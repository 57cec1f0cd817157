"""Build one block of pyramid level k+1 from level k, as one region: the reference
(tests) and the building blocks (`footprint`, `downsample_region`) of the streamed
blocks that conversions run (`scalereg.pyramid.stream_block`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zarr

from scalereg.blocks import Block
from scalereg.omezarr.level_checksums import write_and_hash
from scalereg.pyramid.methods import METHODS, downsample_gaussian, gaussian_halo


def method_for(labels: bool) -> str:
    return "mode" if labels else "gaussian"


def input_halo(method: str, factors: tuple[int, ...]) -> tuple[int, ...]:
    return gaussian_halo(factors) if method == "gaussian" else (0,) * len(factors)


def bytes_per_output_voxel(itemsize: int, factors: tuple[int, ...], method: str) -> float:
    """Estimated peak bytes per output voxel of downsampling (for block sizing).

    Gaussian: the input footprint (prod(factors) voxels per output voxel) in its own
    dtype, and 4 bytes per footprint voxel for zarr's chunk buffers while it is read
    and the result written (the filter itself works in cache-sized slabs).  The
    planner applies it, divided by the footprint, to one step of a streamed block
    (`scalereg.pyramid.stream_block`): 8.25 bytes per step voxel for uint16, plus
    zarr's chunks in flight; `python benchmarks/block_memory.py` measured about 6.4
    per step voxel plus 80 MiB.  Mode: the grouped copy, its sorted copy and uint8
    counts.
    """
    footprint = math.prod(factors)
    if method == "gaussian":
        return footprint * (itemsize + 4) + itemsize
    return footprint * (3 * itemsize + 1) + itemsize


def footprint(
    block: Block, factors: tuple[int, ...], halo: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """The input region an output ``block`` needs (its footprint plus ``halo``), clipped
    to ``shape``, and the edge padding that restores the clipped part."""
    read, pad = [], []
    for (o0, o1), f, h, n in zip(block, factors, halo, shape):
        lo, hi = f * o0 - h, f * o1 + h
        read.append(slice(max(lo, 0), min(hi, n)))
        pad.append((max(0, -lo), max(0, hi - n)))
    return tuple(read), pad


def downsample_region(region: np.ndarray, pad: list[tuple[int, int]], factors: tuple[int, ...], method: str, dtype: np.dtype) -> np.ndarray:
    """Downsample a region read by `footprint`, edge-padded by ``pad`` at the volume boundary
    (the Gaussian clamps its indices instead of copying the region)."""
    if method == "gaussian":
        return downsample_gaussian(region, tuple(factors), input_halo(method, factors), dtype, pad)
    if any(p != (0, 0) for p in pad):
        region = np.pad(region, pad, mode="edge")
    return METHODS[method](region, tuple(factors), input_halo(method, factors), dtype)


def downsample_block(source: zarr.Array, target: zarr.Array, block: Block, factors: tuple[int, ...], method: str) -> dict[str, Any]:
    """Write ``block`` (index ranges of ``target``) as ``source`` downsampled by ``factors``.

    Reads exactly the footprint of the block plus the filter's halo, edge-padding
    where the footprint passes the volume boundary, so a block's result equals the
    same voxels of a whole-volume computation.
    """
    read, pad = footprint(block, factors, input_halo(method, factors), source.shape)
    region = source[read]
    digests = write_and_hash(target, block, downsample_region(region, pad, factors, method, target.dtype))
    return {"voxels_read": int(region.size), "voxels_written": int(math.prod(b - a for a, b in block)), "digests": [digests]}
