"""The layout of an OME-Zarr multiscale image: levels, shapes, chunks and where voxels are."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from scalereg.errors import InputError
from scalereg.geometry import Geometry

NgffVersion = Literal["0.4", "0.5"]
AXES = ("z", "y", "x")
# A chunk is compressed as one buffer (blosc takes at most 2 GiB); a shard is written whole.
MAX_CHUNK_VOXELS = 2**30
MAX_SHARD_VOXELS = 2**36


@dataclass(frozen=True)
class Level:
    """One array of the pyramid."""

    path: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None
    scale: tuple[float, float, float]
    translation: tuple[float, float, float]
    # factors relative to the previous level ((1, 1, 1) for level 0)
    factors: tuple[int, int, int] = (1, 1, 1)

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PyramidLayout:
    """Everything needed to create (or that was read from) an OME-Zarr pyramid."""

    dtype: str
    geometry: Geometry
    levels: tuple[Level, ...]
    ngff_version: NgffVersion = "0.5"
    labels: bool = False
    name: str = "image"
    attributes: dict = field(default_factory=dict, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.levels[0].shape

    def level_geometry(self, index: int) -> Geometry:
        """Geometry of level ``index`` (its spacing and voxel-centre origin)."""
        level = self.levels[index]
        g = self.geometry
        return Geometry(spacing=level.scale, origin=level.translation, unit=g.unit, orientation=g.orientation)


def level_translation(origin: Sequence[float], spacing0: Sequence[float], total_factors: Sequence[int]) -> tuple[float, ...]:
    """Translation of a level whose voxels each cover ``total_factors`` level-0 voxels.

    Its voxel (0, 0, 0) is centred on the block of level-0 voxels it summarises, so
    its centre sits (F - 1) / 2 level-0 voxels beyond level 0's first voxel centre.
    """
    return tuple(float(o + (f - 1) / 2.0 * s) for o, s, f in zip(origin, spacing0, total_factors))


def _clip_chunks(chunks: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))  # type: ignore[return-value]


def pyramid_layout(
    shape: Sequence[int],
    dtype: np.dtype | str,
    geometry: Geometry,
    factors: Sequence[Sequence[int]],
    chunks: int | Sequence[int] = 128,
    shards: int | Sequence[int] | None = None,
    ngff_version: NgffVersion = "0.5",
    labels: bool = False,
    name: str = "image",
) -> PyramidLayout:
    """Layout of a pyramid whose level k+1 is level k downsampled by ``factors[k]``."""
    if ngff_version not in ("0.4", "0.5"):
        raise InputError("ngff-version", f"unsupported NGFF version {ngff_version!r}: use 0.4 or 0.5")
    chunk_request = (int(chunks),) * 3 if np.isscalar(chunks) else tuple(int(c) for c in chunks)  # type: ignore[arg-type]
    if len(chunk_request) != 3 or any(c < 1 for c in chunk_request):
        raise InputError("chunks", f"chunk size {chunks!r} must be one or three positive integers")
    if math.prod(chunk_request) > MAX_CHUNK_VOXELS:
        raise InputError("chunks", f"chunks of {' x '.join(map(str, chunk_request))} voxels are too large (at most {MAX_CHUNK_VOXELS} voxels, e.g. 1024^3; 128 is usual)")
    shard_request = None
    if shards is not None:
        if ngff_version != "0.5":
            raise InputError("shards", "sharding needs NGFF 0.5 (zarr v3); use --ngff-version 0.5")
        shard_request = (int(shards),) * 3 if np.isscalar(shards) else tuple(int(s) for s in shards)  # type: ignore[arg-type]
        if len(shard_request) != 3 or math.prod(shard_request) > MAX_SHARD_VOXELS:
            raise InputError("shards", f"shards of {' x '.join(map(str, shard_request))} voxels are not one or three edges of at most {MAX_SHARD_VOXELS} voxels in all")
        if any(s % c for s, c in zip(shard_request, chunk_request)):
            raise InputError("shards", f"shard shape {shard_request} must be a multiple of the chunk shape {chunk_request}")
    levels = []
    current = tuple(int(n) for n in shape)
    total = (1, 1, 1)
    for index, step in enumerate([(1, 1, 1), *[tuple(f) for f in factors]]):
        current = tuple(math.ceil(n / f) for n, f in zip(current, step))
        total = tuple(t * f for t, f in zip(total, step))
        level_chunks = _clip_chunks(chunk_request, current)
        level_shards = None
        if shard_request is not None:
            # a shard holds whole chunks; shrink it with the level, never below one chunk
            level_shards = tuple(
                max(c, min(s, math.ceil(n / c) * c)) for s, c, n in zip(shard_request, level_chunks, current)
            )
        levels.append(
            Level(
                path=str(index),
                shape=current,  # type: ignore[arg-type]
                chunks=level_chunks,
                shards=level_shards,  # type: ignore[arg-type]
                scale=tuple(float(s * t) for s, t in zip(geometry.spacing, total)),  # type: ignore[arg-type]
                translation=level_translation(geometry.origin, geometry.spacing, total),  # type: ignore[arg-type]
                factors=step,  # type: ignore[arg-type]
            )
        )
    return PyramidLayout(
        dtype=np.dtype(dtype).str if np.dtype(dtype).byteorder == ">" else np.dtype(dtype).name,
        geometry=geometry,
        levels=tuple(levels),
        ngff_version=ngff_version,
        labels=labels,
        name=name,
    )
