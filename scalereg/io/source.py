"""The interface every volume reader implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from scalereg.errors import InputError

Region = tuple[slice, slice, slice]


class Source(ABC):
    """A 3D volume that can be read region by region, in array axis order (z, y, x).

    Readers never load the whole volume to open it: ``shape`` and ``dtype`` come
    from headers, ``read`` returns only the region asked for.  Spatial metadata the
    file carries is exposed as-is (None when the format has none, e.g. TIFF);
    `scalereg.io.resolve_geometry` combines it with the user's overrides.

    Readers must be picklable (they are sent to Dask workers): keep open file
    handles out of the pickled state.
    """

    uri: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    unit: str | None = None
    orientation: str | None = None
    # Warnings found while opening (oblique axes dropped, ...).
    notes: tuple[str, ...] = ()
    # Why the file's space unit cannot be trusted (a code that is no unit), when it
    # cannot: the user must then give the unit (None: ``unit`` is what the file says,
    # or the file has no unit at all).
    unit_unknown: str | None = None
    # A region shape that reads efficiently (e.g. (1, Y, X) for 2D slices, the
    # chunk shape for Zarr); None if any region is as good as another.
    preferred_block: tuple[int, int, int] | None = None
    # Memory ``read`` needs besides the array it returns: per voxel of the region and
    # fixed (the planner sizes blocks with them; plain readers need nothing extra).
    working_bytes_per_voxel: float = 0.0
    working_bytes_fixed: int = 0

    @abstractmethod
    def read(self, region: Region) -> np.ndarray:
        """The voxels of ``region`` (slices with explicit start/stop, step 1)."""

    def read_with_stats(self, region: Region) -> tuple[np.ndarray, dict]:
        """``read`` plus counts worth reporting per block (e.g. tiles mapped outside)."""
        return self.read(region), {}

    def identity(self) -> dict:
        """What, besides the uri, shape and dtype, decides the voxels (for fingerprints)."""
        return {}

    def inputs(self) -> list[tuple[str, str]]:
        """Every path or URI this source reads, with its role (what `scalereg.output_rules`
        keeps outputs apart from): the volume itself, and any file it refers to."""
        return [("input", self.uri)]

    def prepare(self, output: str, storage_options: dict | None = None) -> None:
        """Called once before any block is written to ``output`` (new or resumed run)."""

    def close(self) -> None:
        """Release open handles (optional)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_shape(shape: Sequence[int], subject: str) -> tuple[int, int, int]:
    """A 3D shape with no empty axis, or an InputError naming the input."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(subject, f"expected a 3D volume, got {len(shape)}D with shape {shape}")
    if any(s == 0 for s in shape):
        raise InputError(subject, f"volume has an empty axis: shape {shape}")
    return shape  # type: ignore[return-value]


def full_region(shape: Sequence[int]) -> Region:
    return tuple(slice(0, int(s)) for s in shape)  # type: ignore[return-value]
