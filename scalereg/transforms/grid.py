"""Index space <-> LPS micrometers for a grid described by a `Geometry`.

Every transform in `scalereg.transforms` maps LPS points in micrometers (ITK/ANTs
space, columns x, y, z).  Index space (array axes z, y, x) appears only at the edges:
the output grid a tile is computed on and the source grid it is read from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalereg.geometry import UNITS_IN_MICROMETERS, Geometry


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
        """(N, 3) z, y, x indices -> (N, 3) LPS micrometers."""
        return np.asarray(index, dtype=np.float64) @ self.matrix.T + self.offset

    def to_index(self, lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS micrometers -> (N, 3) continuous z, y, x indices."""
        return (np.asarray(lps, dtype=np.float64) - self.offset) @ self.inverse.T

    def corners_lps(self, region: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
        """LPS positions of the 8 outermost voxel centres of ``region`` (default: the whole grid)."""
        bounds = region or tuple((0, n) for n in self.shape)
        corners = np.array(np.meshgrid(*[(a, b - 1) for a, b in bounds], indexing="ij")).reshape(3, -1).T
        return self.to_lps(corners)

    def voxel_volume_um3(self) -> float:
        return float(abs(np.linalg.det(self.matrix)))

    def inside(self, index: np.ndarray) -> np.ndarray:
        """Whether continuous indices fall in the grid as ITK decides it: [-0.5, n - 0.5) per axis."""
        shape = np.asarray(self.shape)
        return np.all((index >= -0.5) & (index < shape - 0.5), axis=-1)


def lps_bounds_um(geometry: Geometry, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The LPS bounding box (micrometers) of the voxel centres of a grid."""
    corners = GridMap.of(geometry, shape).corners_lps()
    return corners.min(axis=0).round(3), corners.max(axis=0).round(3)
