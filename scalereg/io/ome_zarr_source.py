"""Read level 0 (or any level) of an existing OME-Zarr image (NGFF 0.4 or 0.5)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scalereg.io.check_header import check_header
from scalereg.io.source import Region, Source, check_shape
from scalereg.omezarr.read_region import read_source_region
from scalereg.omezarr.read_pyramid import read_pyramid
from scalereg.storage import join, normalize_uri, open_array


class OmeZarrSource(Source):
    """A level of an OME-Zarr image, with the spacing, origin, unit and
    orientation its metadata declares."""

    def __init__(self, uri: str, level: int = 0, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = normalize_uri(uri)
        self.storage_options = storage_options
        layout = read_pyramid(self.uri, storage_options)
        spec = layout.levels[level]
        self.layout = layout
        self.level_path = spec.path
        self._squeeze = tuple(layout.attributes.get("squeeze", ()))
        self.shape = check_shape(spec.shape, self.uri)
        self.dtype = np.dtype(layout.dtype)
        check_header(self.uri, self.shape, self.dtype)
        geometry = layout.level_geometry(level)
        self.spacing = geometry.spacing
        self.origin = geometry.origin
        self.unit = geometry.unit if layout.attributes.get("unit_given", True) else None
        self.orientation = geometry.orientation
        self.preferred_block = spec.chunks
        self._array = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # zarr handles are reopened on the worker
        return state

    def read(self, region: Region) -> np.ndarray:
        if self._array is None:
            self._array = open_array(join(self.uri, self.level_path), storage_options=self.storage_options)
        index: list[Any] = []
        spatial = iter(region)
        for axis in range(self._array.ndim):
            index.append(slice(0, 1) if axis in self._squeeze else next(spatial))
        data = read_source_region(self._array, index, self.uri)
        return np.asarray(data.reshape(tuple(s.stop - s.start for s in region)) if self._squeeze else data)
