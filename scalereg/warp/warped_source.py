"""The moving image resampled onto the reference grid, readable region by region.

`WarpedSource` is a `Source` like any file reader, so the conversion machinery
(budget-sized chunk-aligned blocks, completion markers, the pyramid, the Prefect
tasks) warps a volume without knowing it does.  Reading a region (a tile):

1. the tile's voxel centres go through the transform chain (fields read only for the
   part of space the tile maps through), giving continuous indices in the moving level;
2. the source region is their min/max plus the interpolator's footprint: exactly
   what the tile needs, whatever the rotation or deformation;
3. that region alone is read, interpolated and cast to the output type.

A tile whose region would not fit the memory budget (a strong shear or zoom) is split
in two, recursively; a tile that maps entirely outside the moving image is
background and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalereg.errors import InputError
from scalereg.io.source import Region, Source
from scalereg.omezarr.read_region import read_source_region
from scalereg.storage import open_array
from scalereg.transforms.affine_transform import AffineTransform
from scalereg.transforms.displacement_field import DisplacementField
from scalereg.transforms.grid import GridMap
from scalereg.transforms.transform_chain import TransformChain
from scalereg.warp.interpolate import footprint, prepare_region, sample

# Points mapped at a time: bounds the working memory of the mapping (about 150 B each).
SLAB_POINTS = 1 << 16
SLAB_BYTES = SLAB_POINTS * 160


@dataclass(kw_only=True)
class WarpedSource(Source):
    uri: str  # the moving level read
    shape: tuple[int, int, int]
    dtype: np.dtype
    spacing: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None
    unit: str | None
    orientation: str | None
    reference_grid: GridMap
    moving_grid: GridMap
    moving_dtype: np.dtype
    chain: TransformChain
    interpolation: str
    region_budget: int
    background: float = 0.0
    storage_options: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    working_bytes_per_voxel: float = 0.0
    working_bytes_fixed: int = SLAB_BYTES
    preferred_block: tuple[int, int, int] | None = None
    # what the warp reads, with their roles (the moving and reference pyramids, the transforms)
    input_uris: tuple[tuple[str, str], ...] = ()

    # ------------------------------------------------------------ Source interface

    def inputs(self) -> list[tuple[str, str]]:
        return list(self.input_uris) or [("moving input", self.uri)]

    def read(self, region: Region) -> np.ndarray:
        return self.read_with_stats(region)[0]

    def read_with_stats(self, region: Region) -> tuple[np.ndarray, dict[str, Any]]:
        bounds = tuple((int(s.start), int(s.stop)) for s in region)
        out, outside = self._warp(bounds)
        voxels = math.prod(b - a for a, b in bounds)
        return out, {"tiles_outside": int(outside == voxels), "voxels_outside": int(outside)}

    def identity(self) -> dict[str, Any]:
        return {
            "transform": self.chain.fingerprint(),
            "interpolation": self.interpolation,
            "moving_shape": list(self.moving_grid.shape),
            "moving_dtype": str(self.moving_dtype),
            "background": self.background,
        }

    def prepare(self, output: str, storage_options: dict | None = None) -> None:
        self.chain.convert_fields(storage_options)

    # ------------------------------------------------------------ warping

    def _warp(self, bounds: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, int]:
        """The tile ``bounds`` of the output and how many of its voxels fell outside."""
        shape = tuple(b - a for a, b in bounds)
        count = math.prod(shape)
        corners = self.reference_grid.corners_lps(bounds)
        self.chain.prepare(corners.min(axis=1), corners.max(axis=1))
        coords = self._grid_coordinates(bounds) if self._grid_path else None
        if coords is None:
            coords = self._point_coordinates(bounds)
        inside = self.moving_grid.inside(coords)
        out = np.full(count, self.background, dtype=np.float32 if self.interpolation in ("linear", "bspline") else self.moving_dtype)
        outside = int(count - np.count_nonzero(inside))
        if outside < count:
            self._interpolate(coords, inside, out, shape)
        return self._cast(out).reshape(shape), outside

    @property
    def _grid_path(self) -> bool:
        """Whether the chain is affines, at most one field, then affines (the usual case)."""
        return sum(1 for c in self.chain.components if isinstance(c, DisplacementField)) <= 1

    def _grid_coordinates(self, bounds: tuple[tuple[int, int], ...]) -> np.ndarray | None:
        """Moving-grid indices of every voxel of the tile, (3, N) float32, with the affine
        parts folded into one and the field (if any) interpolated axis by axis; None when
        the field's grid is not aligned with the tile's (use `_point_coordinates`)."""
        shape = tuple(b - a for a, b in bounds)
        start = tuple(a for a, _ in bounds)
        before = self.reference_grid.index_to_lps()
        components = list(self.chain.components)
        while components and isinstance(components[0], AffineTransform):
            before = before.then(components.pop(0))
        field = components.pop(0) if components else None
        after = AffineTransform(np.eye(3), np.zeros(3))
        for component in components:
            after = after.then(component)
        after = after.then(self.moving_grid.lps_to_index())
        coords = before.then(after).on_grid(shape, start)
        if field is not None:
            shifted = AffineTransform(before.matrix, before.map(np.asarray(start, dtype=float)[:, None])[:, 0])
            if not field.on_grid(shifted, shape, then=after.matrix, add_to=coords):
                return None
        return coords

    def _point_coordinates(self, bounds: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Moving-grid indices of every voxel of the tile, point by point through the chain."""
        shape = tuple(b - a for a, b in bounds)
        count = math.prod(shape)
        coords = np.empty((3, count), dtype=np.float32)
        origin = np.array([a for a, _ in bounds])[:, None]
        for start in range(0, count, SLAB_POINTS):
            stop = min(start + SLAB_POINTS, count)
            index = np.stack(np.unravel_index(np.arange(start, stop), shape)) + origin
            coords[:, start:stop] = self.moving_grid.to_index(self.chain.map(self.reference_grid.to_lps(index)))
        return coords

    def _interpolate(self, coords: np.ndarray, inside: np.ndarray, out: np.ndarray, tile_shape: tuple[int, ...]) -> None:
        before, after = footprint(self.interpolation)
        everywhere = bool(inside.all())
        smallest, largest = _extent(coords, None if everywhere else inside)
        low = np.maximum(np.floor(smallest).astype(int) - before, 0)
        high = np.minimum(np.floor(largest).astype(int) + after + 1, self.moving_grid.shape)
        region_bytes = math.prod(high - low) * self._bytes_per_region_voxel()
        if region_bytes > self.region_budget and max(tile_shape) > 1:
            # too much source for one go: split the tile along its longest axis
            axis = int(np.argmax(tile_shape))
            half = tile_shape[axis] // 2
            flat_out = out.reshape(tile_shape)
            flat_coords = coords.reshape((3, *tile_shape))
            flat_inside = inside.reshape(tile_shape)
            for part in (slice(0, half), slice(half, None)):
                selection = tuple(part if a == axis else slice(None) for a in range(3))
                sub_out = np.ascontiguousarray(flat_out[selection]).ravel()
                sub_coords = np.ascontiguousarray(flat_coords[(slice(None), *selection)]).reshape(3, -1)
                sub_inside = np.ascontiguousarray(flat_inside[selection]).ravel()
                if sub_inside.any():
                    self._interpolate(sub_coords, sub_inside, sub_out, flat_out[selection].shape)
                flat_out[selection] = sub_out.reshape(flat_out[selection].shape)
            return
        region = read_source_region(open_array(self.uri, storage_options=self.storage_options), [slice(int(a), int(b)) for a, b in zip(low, high)], self.uri)
        if np.issubdtype(region.dtype, np.floating):
            bad = ~np.isfinite(region)
            if bad.any():
                where = tuple(int(i) + int(a) for i, a in zip(np.argwhere(bad)[0], low))
                raise InputError(self.uri, f"contains {int(bad.sum())} NaN/Inf voxels in the region a tile needs (first at z, y, x = {where})")
        prepared = prepare_region(region, self.interpolation)
        del region
        coords -= low.astype(np.float32)[:, None]  # region-relative, in place
        if everywhere:
            for start in range(0, coords.shape[1], SLAB_POINTS):
                stop = start + SLAB_POINTS
                out[start:stop] = sample(prepared, coords[:, start:stop], self.interpolation)
            return
        positions = np.flatnonzero(inside)
        for start in range(0, positions.size, SLAB_POINTS):
            chosen = positions[start : start + SLAB_POINTS]
            out[chosen] = sample(prepared, coords[:, chosen], self.interpolation)

    def _bytes_per_region_voxel(self) -> int:
        itemsize = np.dtype(self.moving_dtype).itemsize
        if self.interpolation not in ("linear", "bspline"):
            return itemsize
        copy = 0 if np.dtype(self.moving_dtype) == np.float32 else 4
        return itemsize + copy + (4 if self.interpolation == "bspline" else 0)

    def _cast(self, values: np.ndarray) -> np.ndarray:
        """To the output type: rounded and clipped to its range for integer types."""
        target = np.dtype(self.dtype)
        if values.dtype == target:
            return values
        if np.issubdtype(target, np.integer):
            info = np.iinfo(target)
            if np.issubdtype(values.dtype, np.floating):
                values = np.rint(values)
            return np.clip(values, info.min, info.max).astype(target)
        return values.astype(target)


def _extent(coords: np.ndarray, inside: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis min and max of the (3, N) ``coords`` (only where ``inside``, if given),
    slab by slab: no copy of the selected points."""
    if inside is None:
        return coords.min(axis=1), coords.max(axis=1)
    smallest, largest = np.full(3, np.inf, dtype=np.float32), np.full(3, -np.inf, dtype=np.float32)
    for start in range(0, coords.shape[1], SLAB_POINTS):
        part = coords[:, start : start + SLAB_POINTS][:, inside[start : start + SLAB_POINTS]]
        if part.size:
            np.minimum(smallest, part.min(axis=1), out=smallest)
            np.maximum(largest, part.max(axis=1), out=largest)
    return smallest, largest
