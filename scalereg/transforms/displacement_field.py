"""Displacement fields read region by region from OME-Zarr (or converted from ANTs NIfTI).

A field u on a grid maps an LPS point p to ``p + u(p)``, with u interpolated
trilinearly; outside the grid the displacement is zero.  Both rules are ITK's
(`DisplacementFieldTransform`), so a chain evaluated here agrees with
``ants.apply_transforms`` on the same files.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Any

import numpy as np
from scipy import ndimage

from scalereg.errors import InputError
from scalereg.geometry import Geometry, parse_unit
from scalereg.omezarr.write_vector_field import FIELD_KEY
from scalereg.orientation import orientation_from_rfc4
from scalereg.storage import join, open_array, open_group
from scalereg.transforms.affine_transform import AffineTransform
from scalereg.transforms.grid import GridMap

# ANTs writes displacement fields as NIfTI vector images.
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class DisplacementField:
    """An OME-Zarr displacement field (axes c, z, y, x; LPS micrometers), read lazily."""

    uri: str
    grid: GridMap
    path: str = "0"
    storage_options: dict[str, Any] | None = None
    # the part of the field loaded for the current tile: (start index, values (3, z, y, x))
    _loaded: tuple[np.ndarray, np.ndarray] | None = dataclass_field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"] = None  # never ship a loaded region to another process
        return state

    def prepare(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Load the part of the field that points in the LPS box [low, high] need; return
        a box that holds every image of those points (conservative)."""
        corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
        index = self.grid.to_index(corners)
        shape = np.asarray(self.grid.shape)
        lowest, highest = index.min(axis=1), index.max(axis=1)
        if np.any(highest < -0.5) or np.any(lowest >= shape - 0.5):
            self._loaded = None  # the box misses the field: zero displacement everywhere
            return low, high
        start = np.clip(np.floor(lowest).astype(int), 0, shape - 1)
        stop = np.clip(np.floor(highest).astype(int) + 2, 1, shape)
        region = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        values = np.asarray(open_array(join(self.uri, self.path), storage_options=self.storage_options)[region], dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise InputError(self.uri, "displacement field contains NaN/Inf values")
        self._loaded = (start, values)
        # points outside the grid keep zero displacement: the box grows, never shrinks
        flat = values.reshape(3, -1)
        return low + np.minimum(flat.min(axis=1), 0.0), high + np.maximum(flat.max(axis=1), 0.0)

    def map(self, points: np.ndarray, outside: np.ndarray | None = None) -> np.ndarray:
        """``p + u(p)`` for (3, N) LPS points inside the box given to `prepare`;
        ``outside`` (bool, N) is set where a point is off the field's grid."""
        index = self.grid.to_index(points)
        inside = self.grid.inside(index)
        if outside is not None:
            outside |= ~inside
        if self._loaded is None or not inside.any():
            return points
        start, values = self._loaded
        local = index[:, inside] - start[:, None]
        displaced = points.copy()
        for component in range(3):
            # mode="nearest" clamps the neighbours at the border, as ITK's linear interpolator does
            displaced[component, inside] += ndimage.map_coordinates(values[component], local, order=1, mode="nearest", prefilter=False)
        return displaced

    def on_grid(self, points: AffineTransform, shape: tuple[int, ...]) -> np.ndarray | None:
        """u at the points ``points`` maps a box of ``shape`` indices to, as (3, N) float32,
        when those points form a grid aligned with the field's axes (then trilinear
        interpolation is three 1D passes); None when they do not.  Call `prepare` first."""
        linear = self.grid.inverse @ points.matrix  # box index -> field index
        offset = self.grid.inverse @ (points.translation - self.grid.offset)
        axes = np.argmax(np.abs(linear), axis=0)  # the field axis each box axis runs along
        if sorted(axes) != [0, 1, 2]:
            return None
        off_axis = np.abs(linear).copy()
        off_axis[axes, [0, 1, 2]] = 0
        if off_axis.max() > 1e-9 * np.abs(linear).max():
            return None
        count = int(np.prod(shape))
        if self._loaded is None:
            return np.zeros((3, count), dtype=np.float32)
        start, values = self._loaded
        result = values.transpose(0, *(1 + int(a) for a in axes))  # field axes in box order
        for axis, field_axis in enumerate(axes):
            n = self.grid.shape[field_axis]
            position = linear[field_axis, axis] * np.arange(shape[axis]) + offset[field_axis]
            base = np.floor(position)
            size = result.shape[1 + axis]
            lower = np.clip(np.clip(base, 0, n - 1).astype(np.intp) - start[field_axis], 0, size - 1)
            upper = np.clip(np.clip(base + 1, 0, n - 1).astype(np.intp) - start[field_axis], 0, size - 1)
            weight = (position - base).astype(np.float32)
            weight_lower = (1 - weight) * ((position >= -0.5) & (position < n - 0.5))  # zero off the grid
            weight_upper = weight * ((position >= -0.5) & (position < n - 0.5))
            view = [1, 1, 1, 1]
            view[1 + axis] = -1
            result = np.take(result, lower, axis=1 + axis) * weight_lower.reshape(view) + np.take(result, upper, axis=1 + axis) * weight_upper.reshape(view)
        return np.ascontiguousarray(result, dtype=np.float32).reshape(3, count)

    def fingerprint(self) -> dict[str, Any]:
        return {"field": self.uri, "shape": list(self.grid.shape), "matrix": self.grid.matrix.round(9).tolist(), "offset": self.grid.offset.round(6).tolist()}


def read_vector_field(uri: str, storage_options: dict[str, Any] | None = None) -> DisplacementField:
    """Open an OME-Zarr displacement field written by `write_vector_field`."""
    try:
        group = open_group(uri, mode="r", storage_options=storage_options)
        attrs = dict(group.attrs)
    except Exception as error:
        raise InputError(uri, f"cannot open displacement field ({type(error).__name__}: {error})") from None
    if FIELD_KEY not in attrs or "ome" not in attrs:
        raise InputError(uri, "not a scalereg displacement field (no 'scalereg_field' metadata)")
    multiscale = attrs["ome"]["multiscales"][0]
    axes = multiscale["axes"]
    dataset = multiscale["datasets"][0]
    scale = translation = None
    for transform in dataset["coordinateTransformations"]:
        if transform["type"] == "scale":
            scale = transform["scale"][1:]
        elif transform["type"] == "translation":
            translation = transform["translation"][1:]
    units = {parse_unit(a.get("unit", "micrometer"), uri) for a in axes[1:]}
    orientation = orientation_from_rfc4([a.get("orientation") for a in axes[1:]], subject=uri)
    if scale is None or len(units) != 1 or orientation is None:
        raise InputError(uri, "displacement field metadata lacks scale, a single unit or an orientation")
    geometry = Geometry(spacing=scale, origin=translation or (0.0, 0.0, 0.0), unit=units.pop(), orientation=orientation)
    array = group[dataset["path"]]
    if len(array.shape) != 4 or array.shape[0] != 3:
        raise InputError(uri, f"expected a (3, z, y, x) displacement array, found shape {array.shape}")
    return DisplacementField(uri=uri, grid=GridMap.of(geometry, array.shape[1:]), path=dataset["path"], storage_options=storage_options)


def nifti_field_grid(path: str) -> GridMap:
    """The grid of an ANTs displacement field file, from its header only."""
    from scalereg.register.ants_image import ants, geometry_from_ants_header

    try:
        header = ants.image_header_info(path)
    except Exception as error:
        raise InputError(path, f"cannot read the NIfTI header ({type(error).__name__}: {error})") from None
    if header["nDimensions"] != 3 or header["nComponents"] != 3:
        raise InputError(path, f"not a 3D displacement field ({header['nDimensions']}D, {header['nComponents']} components)")
    geometry = geometry_from_ants_header(header["spacing"], header["origin"], np.asarray(header["direction"]), path)
    return GridMap.of(geometry, tuple(int(n) for n in reversed(header["dimensions"])))


def convert_nifti_field(path: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write the ANTs displacement field at ``path`` as an OME-Zarr field at ``uri``."""
    from scalereg.omezarr.write_vector_field import write_vector_field
    from scalereg.register.ants_image import ants, ants_image_geometry, from_ants_image

    image = ants.image_read(path)
    if image.dimension != 3 or image.components != 3:
        raise InputError(path, f"not a 3D displacement field ({image.dimension}D, {image.components} components)")
    values = np.moveaxis(from_ants_image(image), -1, 0)
    if not np.all(np.isfinite(values)):
        raise InputError(path, "displacement field contains NaN/Inf values")
    write_vector_field(uri, values, ants_image_geometry(image, path), f"converted from {path}", storage_options=storage_options)
