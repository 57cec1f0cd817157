"""Affine transforms of LPS points, read from and written to ITK/ANTs ``.mat`` files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from scalereg.errors import InputError


@dataclass(frozen=True)
class AffineTransform:
    """``p -> matrix @ p + translation`` on (3, N) LPS micrometer points."""

    matrix: np.ndarray
    translation: np.ndarray

    def map(self, points: np.ndarray) -> np.ndarray:
        return self.matrix @ points + self.translation[:, None]

    def on_grid(self, shape: tuple[int, ...], start: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
        """(3, N) float32 images of the (z, y, x) indices of a box of ``shape`` at ``start``,
        in C order: three outer sums per row, no index array and no float64 temporary
        of the box's size."""
        axes = [np.arange(a, a + n, dtype=np.float64) for a, n in zip(start, shape)]
        out = np.empty((3, *shape), dtype=np.float32)
        for row in range(3):
            m = self.matrix[row]
            plane = ((m[0] * axes[0] + self.translation[row])[:, None] + (m[1] * axes[1])[None, :]).astype(np.float32)
            np.add(plane[:, :, None], (m[2] * axes[2]).astype(np.float32)[None, None, :], out=out[row])
        return out.reshape(3, -1)

    def inverse(self) -> "AffineTransform":
        inverse = np.linalg.inv(self.matrix)
        return AffineTransform(inverse, -inverse @ self.translation)

    def then(self, other: "AffineTransform") -> "AffineTransform":
        """The transform that applies ``self`` first, then ``other``."""
        return AffineTransform(other.matrix @ self.matrix, other.matrix @ self.translation + other.translation)

    def map_box(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bounding box of the image of the box [low, high] (exact: an affine map's
        image of a box is a parallelepiped whose extremes are the corners' images)."""
        corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
        mapped = self.map(corners)
        return mapped.min(axis=1), mapped.max(axis=1)


def read_ants_affine(path: str | Path, invert: bool = False) -> AffineTransform:
    """An ITK affine-family transform file (``.mat``, as antsRegistration writes it).

    ITK stores the matrix M (row-major), the translation t and a fixed centre c:
    ``p -> M (p - c) + t + c``.
    """
    try:
        content = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise InputError(str(path), "transform file not found") from None
    except Exception as error:  # scipy raises several types for a file that is not MATLAB v4/v5
        raise InputError(str(path), f"not an ITK/ANTs .mat transform ({type(error).__name__}: {error})") from None
    keys = [k for k in content if not k.startswith("__") and k != "fixed"]
    if len(keys) != 1 or "fixed" not in content:
        raise InputError(str(path), f"not an ITK/ANTs .mat transform (variables {sorted(content)})")
    kind = keys[0]
    parameters = np.asarray(content[kind], dtype=np.float64).ravel()
    centre = np.asarray(content["fixed"], dtype=np.float64).ravel()
    if not kind.endswith("_3_3") or parameters.size != 12 or centre.size != 3:
        raise InputError(str(path), f"{kind}: only 3D affine-family transforms are supported")
    matrix = parameters[:9].reshape(3, 3)
    translation = parameters[9:] + centre - matrix @ centre
    transform = AffineTransform(matrix, translation)
    if invert:
        if abs(np.linalg.det(matrix)) < 1e-12:
            raise InputError(str(path), "the affine is singular and cannot be inverted")
        transform = transform.inverse()
    return transform


def write_ants_affine(transform: AffineTransform, path: str | Path) -> None:
    """Write ``transform`` as an ITK ``AffineTransform_double_3_3`` file that ANTs reads."""
    parameters = np.concatenate([transform.matrix.ravel(), transform.translation])
    scipy.io.savemat(
        str(path),
        {"AffineTransform_double_3_3": parameters[:, None], "fixed": np.zeros((3, 1))},
        format="4",
    )
