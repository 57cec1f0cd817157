"""Read an OME-Zarr image's multiscales metadata (0.4 or 0.5) into a `PyramidLayout`."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np
import zarr
from ome_zarr_models.v04.image import ImageAttrs as ImageAttrsV04
from ome_zarr_models.v05.image import ImageAttrs as ImageAttrsV05
from pydantic import ValidationError

from scalereg.errors import InputError
from scalereg.geometry import Geometry, named, parse_unit
from scalereg.omezarr.create_pyramid_store import STATUS_KEY
from scalereg.omezarr.pyramid_layout import Level, PyramidLayout
from scalereg.orientation import orientation_from_rfc4
from scalereg.storage import is_remote, open_group
from scalereg.storage_errors import storage_errors


def read_pyramid(uri: str, storage_options: dict[str, Any] | None = None) -> PyramidLayout:
    """The layout of the OME-Zarr image at ``uri``.

    Non-space axes (t, c) are allowed when they have length 1; they are dropped and
    recorded in ``layout.attributes['squeeze']`` (their positions in the arrays).
    ``layout.attributes`` also holds scalereg's status block when present.
    """
    try:
        with storage_errors(uri, storage_options):
            group = open_group(uri, mode="r", storage_options=storage_options)
    except InputError:
        raise
    except FileNotFoundError:
        if not is_remote(uri) and os.path.exists(uri):
            raise InputError(uri, "is not an OME-Zarr image (there is no Zarr group here)") from None
        raise InputError(uri, "no such file or directory") from None
    except (ValueError, KeyError, TypeError, zarr.errors.BaseZarrError) as error:  # TypeError: attributes that are not an object
        raise InputError(uri, f"not a Zarr group ({type(error).__name__}: {error})") from None
    attrs = dict(group.attrs)
    try:
        if "ome" in attrs:
            version = "0.5"
            parsed = ImageAttrsV05.model_validate(attrs["ome"])
        elif "multiscales" in attrs:
            version = "0.4"
            parsed = ImageAttrsV04.model_validate({"multiscales": attrs["multiscales"]})
        else:
            raise InputError(uri, "no OME-Zarr 'multiscales' metadata in this Zarr group")
    except ValidationError as error:
        first = error.errors()[0]
        raise InputError(uri, f"invalid OME-Zarr metadata at {'/'.join(map(str, first['loc']))}: {first['msg']}") from None
    multiscale = parsed.multiscales[0]
    axes = [axis.model_dump() for axis in multiscale.axes]
    space = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    if len(space) != 3:
        raise InputError(uri, f"expected 3 space axes, found {len(space)}: {[a.get('name') for a in axes]}")
    units = {a.get("unit") for a in (axes[i] for i in space)}
    if len(units) != 1:
        raise InputError(uri, f"space axes have different units {sorted(map(str, units))}")
    unit = units.pop()
    global_scale, global_translation = _transform(multiscale.coordinateTransformations, len(axes), uri)

    levels = []
    squeeze = [i for i in range(len(axes)) if i not in space]
    for dataset in multiscale.datasets:
        scale, translation = _transform(dataset.coordinateTransformations, len(axes), uri)
        scale = scale * global_scale
        translation = translation * global_scale + global_translation
        parts = str(dataset.path).split("/")
        if not dataset.path or any(part in ("", ".", "..") for part in parts):
            raise InputError(uri, f"level path {dataset.path!r} is not a name inside the image")
        try:
            array = group[dataset.path]
        except KeyError:
            raise InputError(uri, f"level {dataset.path!r} is listed in the metadata but missing") from None
        except (ValueError, TypeError, zarr.errors.BaseZarrError) as error:
            raise InputError(uri, f"level {dataset.path!r} is unreadable ({type(error).__name__}: {error})") from None
        if not isinstance(array, zarr.Array):
            raise InputError(uri, f"level {dataset.path!r} is a group, not an array")
        if len(array.shape) != len(axes):
            raise InputError(uri, f"level {dataset.path!r} has {len(array.shape)} dimensions but {len(axes)} axes")
        if any(array.shape[i] != 1 for i in squeeze):
            raise InputError(uri, f"non-space axes {[axes[i]['name'] for i in squeeze]} must have length 1 to read a 3D volume")
        chunks = array.chunks
        shards = getattr(array, "shards", None)
        levels.append(
            Level(
                path=dataset.path,
                shape=tuple(int(array.shape[i]) for i in space),  # type: ignore[arg-type]
                chunks=tuple(int(chunks[i]) for i in space),  # type: ignore[arg-type]
                shards=tuple(int(shards[i]) for i in space) if shards else None,  # type: ignore[arg-type]
                scale=tuple(float(scale[i]) for i in space),  # type: ignore[arg-type]
                translation=tuple(float(translation[i]) for i in space),  # type: ignore[arg-type]
            )
        )
    orientation = orientation_from_rfc4([axes[i].get("orientation") for i in space], subject=uri)
    for level in levels[1:]:  # level 0's are checked with the geometry
        if not all(math.isfinite(v) and v > 0 for v in level.scale) or not all(math.isfinite(v) for v in level.translation):
            raise InputError(uri, f"level {level.path!r}: scale {level.scale} and translation {level.translation} must be finite, the scale positive")
    geometry = named(uri, lambda: Geometry(
        spacing=levels[0].scale,
        origin=levels[0].translation,
        unit=parse_unit(unit, uri) if unit else "micrometer",
        orientation=orientation,
    ))  # fmt: skip
    status = attrs.get(STATUS_KEY)
    status = status if isinstance(status, dict) else {}  # not scalereg's (or not an object): no promises to check
    return PyramidLayout(
        dtype=str(group[multiscale.datasets[0].path].dtype),
        geometry=geometry,
        levels=tuple(levels),
        ngff_version=version,  # type: ignore[arg-type]
        labels=status.get("kind") == "labels",
        name=str(multiscale.name or "image"),
        attributes={"status": status, "squeeze": squeeze, "unit_given": unit is not None},
    )


def _transform(transforms: Any, ndim: int, uri: str) -> tuple[np.ndarray, np.ndarray]:
    scale = np.ones(ndim)
    translation = np.zeros(ndim)
    for transform in transforms or ():
        data = transform.model_dump() if hasattr(transform, "model_dump") else dict(transform)
        for kind in ("scale", "translation"):
            if data.get("type") != kind:
                continue
            try:
                values = np.asarray(data[kind], dtype=float)
            except (KeyError, TypeError, ValueError):
                raise InputError(uri, f"a {kind} transformation without {ndim} numbers: {data.get(kind)!r}") from None
            if values.shape != (ndim,):
                raise InputError(uri, f"a {kind} of {values.size} values for {ndim} axes: {values.tolist()}")
            scale, translation = (values, translation) if kind == "scale" else (scale, values)
    return scale, translation


def level_fingerprint(array: np.ndarray) -> str:
    """A short digest of a level's voxels: tells whether a pyramid changed since it was used."""
    return hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).hexdigest()
