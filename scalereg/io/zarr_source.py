"""A plain Zarr array (format 2 or 3), local or behind any fsspec URL."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from scalereg.errors import InputError
from scalereg.io.check_header import check_header
from scalereg.io.source import Region, Source, check_shape
from scalereg.omezarr.read_region import read_source_region
from scalereg.storage import normalize_uri, open_array


class ZarrArraySource(Source):
    """One Zarr array read as (z, y, x), with no spatial metadata.

    A bare array says nothing about spacing or orientation, so those stay None;
    OME-Zarr images go through `OmeZarrSource` instead.  ``preferred_block`` is the
    chunk shape (the inner chunk of a sharded array): reads aligned to it never
    decode a chunk only to discard part of it.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = normalize_uri(uri)
        self.storage_options = dict(storage_options) if storage_options else None
        array = self._open()
        self.shape = check_shape(array.shape, self.uri)
        self.dtype = np.dtype(array.dtype)
        check_header(self.uri, self.shape, self.dtype)  # missing chunks are background: no byte count to check
        self.preferred_block = tuple(int(c) for c in array.chunks)  # type: ignore[assignment]
        self._array: zarr.Array | None = array

    def _open(self) -> zarr.Array:
        try:
            return open_array(self.uri, mode="r", storage_options=self.storage_options)
        except FileNotFoundError:
            raise InputError(self.uri, "no such file or directory") from None
        except (zarr.errors.BaseZarrError, ValueError, KeyError, TypeError, OSError) as error:
            raise InputError(self.uri, f"not a readable Zarr array: {error}") from None

    def read(self, region: Region) -> np.ndarray:
        if self._array is None:
            self._array = self._open()
        return np.asarray(read_source_region(self._array, region, self.uri), dtype=self.dtype)

    def close(self) -> None:
        self._array = None

    def __getstate__(self) -> dict:
        # stores may hold sessions or event loops; reopen on the worker instead
        return {**self.__dict__, "_array": None}
