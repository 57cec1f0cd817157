"""Checksums of pyramid levels that do not depend on how the level was tiled.

A chunk's digest is the SHA-256 of its decoded voxels (C order, the array's dtype,
clipped at the array's edge); a level's checksum is the SHA-256 of its chunks'
digests in chunk-index order.  Block tasks hash the chunks they have just written,
from memory (no read back); `scalereg validate` recomputes every level from the store
chunk by chunk.  Decoded voxels, not stored bytes, so that a change of codec or
compression level does not count as a change of data.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any, Sequence

import numpy as np

from scalereg.blocks import Block, aligned_blocks, block_slices

ALGORITHM = "sha256 over the sha256 of each chunk's decoded voxels (C order), chunks in index order"


def chunk_digests(chunks: Sequence[int], block: Block, data: np.ndarray) -> dict[str, str]:
    """Digests of the chunks that ``data`` (the voxels of ``block``, which is
    chunk-aligned) covers, keyed "z.y.x" by chunk index."""
    digests = {}
    ranges = [range(a // c, math.ceil(b / c)) for (a, b), c in zip(block, chunks)]
    for index in itertools.product(*ranges):
        local = tuple(slice(i * c - a, min((i + 1) * c, b) - a) for i, c, (a, b) in zip(index, chunks, block))
        digests[".".join(map(str, index))] = _digest(data[local])
    return digests


def write_and_hash(target: Any, block: Block, data: np.ndarray) -> dict[str, str]:
    """Write ``data`` (already of ``target``'s dtype) to ``block`` of ``target`` and
    return the digests of the chunks written."""
    target[block_slices(block)] = data
    return chunk_digests(target.chunks, block, data)


def level_checksum(digests: dict[str, str], shape: Sequence[int], chunks: Sequence[int]) -> str | None:
    """The level's checksum from its chunks' digests; None unless every chunk has one."""
    grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
    if len(digests) != math.prod(grid):
        return None
    keys = sorted(digests, key=lambda key: tuple(int(i) for i in key.split(".")))
    total = hashlib.sha256()
    for key in keys:
        total.update(f"{key} {digests[key]}\n".encode())
    return "sha256:" + total.hexdigest()


def compute_level_checksum(array: Any, read_bytes: int = 64 * 2**20) -> str:
    """Recompute a stored level's checksum, reading a row of up to ``read_bytes`` of
    chunks at a time (memory bounded whatever the level's size).  Any number of
    dimensions (pyramid levels are 3D, displacement fields 4D: c, z, y, x)."""
    chunks = array.chunks
    per_chunk = math.prod(chunks) * array.dtype.itemsize
    along_last = max(1, min(math.ceil(array.shape[-1] / chunks[-1]), read_bytes // per_chunk))
    digests: dict[str, str] = {}
    for block in aligned_blocks(array.shape, (*chunks[:-1], chunks[-1] * along_last)):
        digests.update(chunk_digests(chunks, block, array[block_slices(block)]))  # type: ignore[arg-type]
    checksum = level_checksum(digests, array.shape, chunks)
    assert checksum is not None  # every chunk was hashed
    return checksum


def array_checksum(data: np.ndarray, chunks: Sequence[int]) -> str:
    """The checksum of a level whose voxels, chunked by ``chunks``, are all of ``data``
    (in memory): what `compute_level_checksum` finds once it is written."""
    whole = tuple((0, n) for n in data.shape)
    checksum = level_checksum(chunk_digests(chunks, whole, data), data.shape, chunks)  # type: ignore[arg-type]
    assert checksum is not None
    return checksum


def _digest(voxels: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(voxels)).cast("B")).hexdigest()  # no bytes copy
