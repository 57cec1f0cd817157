"""Read a region of a Zarr array, naming the chunk when stored bytes do not decode."""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from scalereg.errors import InputError

# What zarr's codecs raise for bytes they cannot decode (zstd, blosc, gzip, a short buffer).
DECODE_ERRORS = (RuntimeError, ValueError, TypeError)


class UnreadableChunk(ValueError):
    """A stored chunk that cannot be decoded: corrupted or truncated since it was written."""

    def __init__(self, index: Sequence[int], error: BaseException) -> None:
        self.index = tuple(index)
        super().__init__(f"chunk {'.'.join(map(str, index))} cannot be decoded ({type(error).__name__}: {error})")


def read_region(array: Any, region: Sequence[slice]) -> np.ndarray:
    """``array[region]`` (slices with explicit bounds); a chunk in it that cannot be
    decoded raises `UnreadableChunk` naming the chunk's index (errors of the store
    itself, e.g. an unreachable bucket, pass unchanged)."""
    region = tuple(region)
    try:
        return array[region]
    except DECODE_ERRORS as error:
        chunks = array.chunks
        ranges = [range(s.start // c, max(s.start // c, (s.stop - 1) // c) + 1) for s, c in zip(region, chunks)]
        for index in itertools.product(*ranges):
            whole = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, array.shape))
            try:
                array[whole]
            except DECODE_ERRORS as found:
                raise UnreadableChunk(index, found) from None
        raise error


def read_source_region(array: Any, region: Sequence[slice], subject: str) -> np.ndarray:
    """`read_region` for an input the user gave: a chunk that does not decode is the
    user's problem (a corrupt or truncated input), one line naming ``subject``."""
    try:
        return read_region(array, region)
    except UnreadableChunk as error:
        raise InputError(subject, f"{error}: the stored data is corrupt or truncated") from None
