"""A single-file volume (NIfTI, TIFF, NRRD/MHA) stored as an object in a bucket."""

from __future__ import annotations

from typing import Any

import numpy as np

from scalereg.errors import InputError
from scalereg.io.source import Region, Source
from scalereg.local_cache import local_copy
from scalereg.storage import filesystem
from scalereg.storage_errors import storage_errors

_COPIED = ("shape", "dtype", "spacing", "origin", "unit", "orientation", "notes", "preferred_block", "working_bytes_per_voxel", "working_bytes_fixed")


class StagedSource(Source):
    """Reads the object at ``uri`` through a local copy made on each host that reads it.

    These formats need random access into a (possibly compressed) file, which their
    readers do well on a local file and badly over HTTP ranges; the copy is made once
    per host (see `scalereg.local_cache`) and the local reader does the rest.
    """

    def __init__(self, uri: str, reader: type[Source], storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.reader = reader
        self.storage_options = storage_options
        self._inner: Source | None = None
        with storage_errors(uri):
            fs, path = filesystem(uri, storage_options)
            info = fs.info(path)
        # identifies this version of the object in fingerprints (a replaced object is converted again)
        self.version = str(info.get("ETag") or info.get("size"))
        inner = self._local()
        for name in _COPIED:
            setattr(self, name, getattr(inner, name))

    def _local(self) -> Source:
        if self._inner is None:
            path = local_copy(self.uri, self.storage_options)
            try:
                self._inner = self.reader(path)
            except InputError as error:  # name the object, not the cache file
                raise InputError(self.uri, error.problem) from None
        return self._inner

    def read(self, region: Region) -> np.ndarray:
        return self._local().read(region)

    def read_with_stats(self, region: Region) -> tuple[np.ndarray, dict]:
        return self._local().read_with_stats(region)

    def identity(self) -> dict:
        return {"object_version": self.version, "reader": self.reader.__name__}

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_inner"] = None  # each worker reads its own local copy
        return state
