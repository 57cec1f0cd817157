"""Index space <-> LPS micrometers for a grid described by a `Geometry`.

Every transform in `scalereg.transforms` maps LPS points in micrometers (ITK/ANTs
space), held as (3, N) arrays: rows x, y, z for points, z, y, x for indices.  Index space (array axes z, y, x) appears only at the edges:
the output grid a tile is computed on and the source grid it is read from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalereg.geometry import UNITS_IN_MICROMETERS, Geometry
from scalereg.transforms.affine_transform import AffineTransform


@dataclass(frozen=True)
class GridMap:
    """``lps = matrix @ index + offset`` for (z, y, x) indices; and back."""

    matrix: np.ndarray  # (3, 3): columns are the LPS steps of one voxel along z, y, x
    offset: np.ndarray  # (3,): LPS position of the centre of voxel (0, 0, 0)
    shape: tuple[int, int, int]
    # the grid's own axis-aligned frame (OME-Zarr scale and translation, in its unit)
    physical_spacing: np.ndarray | None = None
    physical_origin: np.ndarray | None = None
    inverse: np.ndarray = None  # type: ignore[assignment]  # matrix^-1, filled in by __post_init__

    def __post_init__(self) -> None:
        object.__setattr__(self, "inverse", np.linalg.inv(self.matrix))

    @classmethod
    def of(cls, geometry: Geometry, shape: tuple[int, ...]) -> "GridMap":
        scale = UNITS_IN_MICROMETERS[geometry.unit]
        direction = geometry.direction()  # columns z, y, x in LPS
        matrix = direction * (np.asarray(geometry.spacing) * scale)[None, :]
        offset = direction @ np.asarray(geometry.origin) * scale
        return cls(
            matrix=matrix,
            offset=offset,
            shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
            physical_spacing=np.asarray(geometry.spacing, dtype=float),
            physical_origin=np.asarray(geometry.origin, dtype=float),
        )

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        """(3, N) z, y, x indices -> (3, N) LPS micrometers (rows x, y, z)."""
        return self.matrix @ np.asarray(index, dtype=np.float64) + self.offset[:, None]

    def to_index(self, lps: np.ndarray) -> np.ndarray:
        """(3, N) LPS micrometers -> (3, N) continuous z, y, x indices."""
        return self.inverse @ (np.asarray(lps, dtype=np.float64) - self.offset[:, None])

    def index_to_lps(self) -> "AffineTransform":
        return AffineTransform(self.matrix, self.offset)

    def lps_to_index(self) -> "AffineTransform":
        return AffineTransform(self.inverse, -self.inverse @ self.offset)

    def corners_lps(self, region: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
        """(3, 8) LPS positions of the outermost voxel centres of ``region`` (default: the whole grid)."""
        bounds = region or tuple((0, n) for n in self.shape)
        corners = np.array(np.meshgrid(*[(a, b - 1) for a, b in bounds], indexing="ij")).reshape(3, -1)
        return self.to_lps(corners)

    def voxel_volume_um3(self) -> float:
        return float(abs(np.linalg.det(self.matrix)))

    def inside(self, index: np.ndarray) -> np.ndarray:
        """Whether (3, N) continuous indices fall in the grid as ITK decides it: [-0.5, n - 0.5) per axis."""
        inside = np.ones(index.shape[1], dtype=bool)
        for axis, n in enumerate(self.shape):
            inside &= (index[axis] >= -0.5) & (index[axis] < n - 0.5)
        return inside


def lps_bounds_um(geometry: Geometry, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The LPS bounding box (micrometers) of the voxel centres of a grid."""
    corners = GridMap.of(geometry, shape).corners_lps()
    return corners.min(axis=1).round(3), corners.max(axis=1).round(3)
