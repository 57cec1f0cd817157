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
from scalereg.geometry import Geometry, geometry_from_lps, parse_unit
from scalereg.omezarr.write_vector_field import FIELD_KEY
from scalereg.orientation import orientation_from_rfc4
from scalereg.omezarr.read_region import read_source_region
from scalereg.storage import join, open_array, open_group
from scalereg.transforms.affine_transform import AffineTransform
from scalereg.transforms.grid import GridMap

# Voxels per step of the last pass of `DisplacementField.on_grid` (bounds its temporaries).
GRID_PASS_VOXELS = 1 << 18
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
        array = open_array(join(self.uri, self.path), storage_options=self.storage_options)
        region = (slice(0, array.shape[0]),) + tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        values = np.asarray(read_source_region(array, region, self.uri), dtype=np.float32)
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

    def on_grid(self, points: AffineTransform, shape: tuple[int, ...], then: np.ndarray, add_to: np.ndarray) -> bool:
        """Add ``then @ u`` at the points ``points`` maps a box of ``shape`` indices to
        into ``add_to`` ((3, N) float32), when those points form a grid aligned with the
        field's axes: trilinear interpolation is then three 1D passes, and ``then`` (the
        linear part of what follows the field) is applied to the few field values read
        rather than to every voxel.  Returns False (and adds nothing) when the grids are
        not aligned.  Call `prepare` first."""
        linear = self.grid.inverse @ points.matrix  # box index -> field index
        offset = self.grid.inverse @ (points.translation - self.grid.offset)
        axes = np.argmax(np.abs(linear), axis=0)  # the field axis each box axis runs along
        if sorted(axes) != [0, 1, 2]:
            return False
        off_axis = np.abs(linear).copy()
        off_axis[axes, [0, 1, 2]] = 0
        if off_axis.max() > 1e-9 * np.abs(linear).max():
            return False
        if self._loaded is None:
            return True  # the box misses the field: nothing to add
        start, values = self._loaded
        values = np.tensordot(then.astype(np.float32), values, axes=(1, 0))
        result = np.ascontiguousarray(values.transpose(0, *(1 + int(a) for a in axes)))  # field axes in box order
        # x first: the early passes stay small, and the last one (z) copies whole rows
        for axis in (2, 1, 0):
            field_axis = axes[axis]
            n = self.grid.shape[field_axis]
            position = linear[field_axis, axis] * np.arange(shape[axis]) + offset[field_axis]
            base = np.floor(position)
            size = result.shape[1 + axis]
            lower = np.clip(np.clip(base, 0, n - 1).astype(np.intp) - start[field_axis], 0, size - 1)
            upper = np.clip(np.clip(base + 1, 0, n - 1).astype(np.intp) - start[field_axis], 0, size - 1)
            on_grid = (position >= -0.5) & (position < n - 0.5)  # zero displacement off the grid
            weight = (position - base).astype(np.float32)
            view = [1, 1, 1, 1]
            view[1 + axis] = -1
            weight_lower = ((1 - weight) * on_grid).reshape(view)
            weight_upper = (weight * on_grid).reshape(view)
            if axis == 0:
                # the full-size pass, a few planes at a time, straight into add_to
                target = add_to.reshape((3, *shape))
                planes = max(1, GRID_PASS_VOXELS // (shape[1] * shape[2]))
                for z in range(0, shape[0], planes):
                    part = slice(z, z + planes)
                    lower_part = np.take(result, lower[part], axis=1)
                    lower_part *= weight_lower[:, part]
                    upper_part = np.take(result, upper[part], axis=1)
                    upper_part *= weight_upper[:, part]
                    target[:, part] += lower_part
                    target[:, part] += upper_part
                return True
            lower_part = np.take(result, lower, axis=1 + axis)
            lower_part *= weight_lower
            upper_part = np.take(result, upper, axis=1 + axis)
            upper_part *= weight_upper
            lower_part += upper_part
            result = lower_part
        raise AssertionError("unreachable: the last pass adds into add_to")

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


def _open_nifti_field(path: str):
    """The NIfTI image of an ANTs/ITK displacement field and its grid (header only).

    ITK writes a field as a 5D NIfTI (x, y, z, 1, 3) whose vectors are LPS components,
    with the usual RAS header; the grid follows ITK's reading of it (sform when set,
    else qform; LPS = RAS with x and y negated), in the numbers ANTs used (micrometers
    for scalereg's images)."""
    import nibabel

    try:
        image = nibabel.load(path)
    except Exception as error:
        raise InputError(path, f"cannot read the NIfTI file ({type(error).__name__}: {error})") from None
    shape = image.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] != 3:
        raise InputError(path, f"not a 3D displacement field (NIfTI shape {shape}; expected x, y, z, 1, 3)")
    affine = np.asarray(image.affine, dtype=float)
    to_lps = np.diag([-1.0, -1.0, 1.0])
    columns = to_lps @ affine[:3, :3]  # LPS steps of one voxel along i, j, k (x, y, z)
    spacing = np.linalg.norm(columns, axis=0)
    geometry = geometry_from_lps(tuple(reversed(spacing)), to_lps @ affine[:3, 3], (columns / spacing)[:, ::-1], "micrometer", path)
    return image, geometry


def nifti_field_grid(path: str) -> GridMap:
    """The grid of an ANTs displacement field file, from its header only."""
    image, geometry = _open_nifti_field(path)
    return GridMap.of(geometry, tuple(int(n) for n in reversed(image.shape[:3])))


def convert_nifti_field(path: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write the ANTs displacement field at ``path`` as an OME-Zarr field at ``uri``."""
    from scalereg.omezarr.write_vector_field import write_vector_field

    image, geometry = _open_nifti_field(path)
    # (x, y, z, 1, 3) -> (3, z, y, x)
    values = np.asarray(image.dataobj, dtype=np.float32)[:, :, :, 0, :].transpose(3, 2, 1, 0)
    if not np.all(np.isfinite(values)):
        raise InputError(path, "displacement field contains NaN/Inf values")
    write_vector_field(uri, np.ascontiguousarray(values), geometry, f"converted from {path}", storage_options=storage_options)
