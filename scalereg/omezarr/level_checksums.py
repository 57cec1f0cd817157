"""Checksums of pyramid levels that do not depend on how the level was tiled.

A chunk's digest is the 128-bit XXH3 hash of its decoded voxels (C order, the
array's dtype, clipped at the array's edge); a level's checksum is the SHA-256 of its
chunks' digests in chunk-index order.  Block tasks hash the chunks they have just
written, from memory (no read back); `scalereg validate` recomputes every level from
the store chunk by chunk.  Decoded voxels, not stored bytes, so that a change of codec
or compression level does not count as a change of data.

XXH3-128 hashes at ~20 GB/s where SHA-256 managed 1.6 GB/s on these machines: with
SHA-256 the digests cost a tenth of a pyramid's level-0 blocks.  Its 128 bits make an
accidental collision (a corrupted chunk that keeps its digest) as unlikely as
SHA-256's; it is not meant to resist someone forging data, which a checksum stored
next to the data could not do anyway.  Outputs written with the SHA-256 chunk digests
of scalereg <= 0.1.0 still validate: the manifest names its algorithm.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from typing import Any, Sequence

import numpy as np
import xxhash
import zarr
from zarr.core.sync import sync

from scalereg.blocks import Block, aligned_blocks, block_slices, iter_chunk_blocks
from scalereg.omezarr.read_region import UnreadableChunk, read_region

ALGORITHM = "sha256 over the xxh3-128 of each chunk's decoded voxels (C order), chunks in index order"
# what scalereg 0.1.0 wrote before; still checked when a manifest names it
SHA256_CHUNKS = "sha256 over the sha256 of each chunk's decoded voxels (C order), chunks in index order"


def _xxh3(voxels: memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(voxels)


def _sha256(voxels: memoryview) -> str:
    return hashlib.sha256(voxels).hexdigest()


_CHUNK_DIGESTS = {ALGORITHM: _xxh3, SHA256_CHUNKS: _sha256}


def known_algorithm(algorithm: str | None) -> bool:
    """Whether checksums recorded with ``algorithm`` can be checked (None: the current one)."""
    return algorithm is None or algorithm in _CHUNK_DIGESTS


def chunk_digests(chunks: Sequence[int], block: Block, data: np.ndarray, algorithm: str = ALGORITHM) -> dict[str, str]:
    """Digests of the chunks that ``data`` (the voxels of ``block``, which is
    chunk-aligned) covers, keyed "z.y.x" by chunk index."""
    digest = _CHUNK_DIGESTS[algorithm]
    digests = {}
    ranges = [range(a // c, math.ceil(b / c)) for (a, b), c in zip(block, chunks)]
    for index in itertools.product(*ranges):
        local = tuple(slice(i * c - a, min((i + 1) * c, b) - a) for i, c, (a, b) in zip(index, chunks, block))
        # a memoryview of the contiguous voxels: no bytes copy
        digests[".".join(map(str, index))] = digest(memoryview(np.ascontiguousarray(data[local])).cast("B"))
    return digests


def write_and_hash(target: Any, block: Block, data: np.ndarray) -> dict[str, str]:
    """Write ``data`` (already of ``target``'s dtype) to ``block`` of ``target`` and
    return the digests of the chunks written.

    Written one write unit (chunk, or shard) at a time from a contiguous copy of its
    voxels, which is also what gets hashed, a few units at once (zarr's
    `async.concurrency`).  Handed a region of several units, zarr would fill a fresh
    buffer per unit with the fill value and copy the unit's voxels into it; handed a
    whole unit it encodes the array it is given."""
    unit = target.shards or target.chunks
    batch = int(zarr.config.get("async.concurrency") or 10)
    pieces = list(iter_chunk_blocks(block, unit))
    digests: dict[str, str] = {}
    for first in range(0, len(pieces), batch):
        group = []
        for piece in pieces[first : first + batch]:
            local = tuple(slice(a - start, b - start) for (a, b), (start, _) in zip(piece, block))
            voxels = np.ascontiguousarray(data[local])
            digests.update(chunk_digests(target.chunks, piece, voxels))
            group.append((piece, voxels))
        _write_units(target, group)
    return digests


def _write_units(target: Any, group: list[tuple[Block, np.ndarray]]) -> None:
    async def write_all() -> None:
        await asyncio.gather(*(target.async_array.setitem(block_slices(piece), voxels) for piece, voxels in group))

    sync(write_all())


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


def level_data_problem(array: Any, entry: dict[str, Any], algorithm: str | None) -> str | None:
    """What is wrong with a stored level against its manifest ``entry`` (shape and
    checksum), in words, or None when it matches."""
    if list(array.shape) != entry["shape"]:
        return f"shape {list(array.shape)}, the manifest says {entry['shape']}"
    try:
        same = compute_level_checksum(array, algorithm=algorithm) == entry["checksum"]
    except UnreadableChunk as error:
        return f"{error}: corrupted or truncated since it was written"
    return None if same else "data differ from the checksum in the manifest (changed or corrupted since it was written)"


def compute_level_checksum(array: Any, read_bytes: int = 64 * 2**20, algorithm: str | None = None) -> str:
    """Recompute a stored level's checksum, reading a row of up to ``read_bytes`` of
    chunks at a time (memory bounded whatever the level's size).  Any number of
    dimensions (pyramid levels are 3D, displacement fields 4D: c, z, y, x).
    ``algorithm``: the one a manifest recorded (default: the current one)."""
    algorithm = algorithm or ALGORITHM
    chunks = array.chunks
    per_chunk = math.prod(chunks) * array.dtype.itemsize
    along_last = max(1, min(math.ceil(array.shape[-1] / chunks[-1]), read_bytes // per_chunk))
    digests: dict[str, str] = {}
    for block in aligned_blocks(array.shape, (*chunks[:-1], chunks[-1] * along_last)):
        digests.update(chunk_digests(chunks, block, read_region(array, block_slices(block)), algorithm))  # type: ignore[arg-type]
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
