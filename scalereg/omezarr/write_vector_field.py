"""Displacement fields as OME-Zarr: a vector axis ``c`` plus z, y, x in physical space.

Component ``c`` holds the LPS displacement (dx, dy, dz) in micrometers, as ANTs
stores it; z, y, x carry the grid's scale, translation and RFC-4 orientation, so any
region of the field can be read by physical coordinates without loading all of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from ome_zarr_models.v05.axes import Axis
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.multiscales import Dataset, Multiscale

from scalereg.geometry import UNITS_IN_MICROMETERS, Geometry
from scalereg.omezarr.level_checksums import array_checksum
from scalereg.omezarr.pyramid_layout import AXES
from scalereg.orientation import orientation_to_rfc4
from scalereg.storage import open_group

FIELD_KEY = "scalereg_field"


def write_vector_field(
    uri: str,
    field: np.ndarray,
    geometry: Geometry,
    description: str,
    chunks: int = 64,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``field`` (shape (3, z, y, x), LPS components in micrometers) on the grid
    ``geometry``; returns its level's record: path, shape and checksum (of what was
    written, see `scalereg.omezarr.level_checksums`)."""
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"expected a (3, z, y, x) field, got {field.shape}")
    scale_um = UNITS_IN_MICROMETERS[geometry.unit]
    spacing = [s * scale_um for s in geometry.spacing]
    origin = [o * scale_um for o in geometry.origin]
    group = open_group(uri, mode="w", storage_options=storage_options, zarr_format=3)
    array = group.create_array(
        name="0",
        shape=field.shape,
        chunks=(3,) + tuple(min(chunks, n) for n in field.shape[1:]),
        dtype=np.float32,
        compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
        dimension_names=["c", *AXES],
        fill_value=0.0,
    )
    values = field.astype(np.float32, copy=False)
    array[:] = values
    orientation = orientation_to_rfc4(geometry.orientation) if geometry.orientation else [None] * 3
    axes = [Axis(name="c", type="channel")]
    for name, orient in zip(AXES, orientation):
        axes.append(Axis(name=name, type="space", unit="micrometer", **({"orientation": orient} if orient else {})))
    multiscale = Multiscale(
        name="displacement",
        axes=axes,
        datasets=(Dataset.build(path="0", scale=[1.0, *spacing], translation=[0.0, *origin]),),
    )
    attributes = {"ome": ImageAttrs(version="0.5", multiscales=[multiscale]).model_dump(mode="json", exclude_none=True)}
    attributes[FIELD_KEY] = {
        "components": ["x", "y", "z"],
        "space": "LPS",
        "unit": "micrometer",
        "description": description,
    }
    group.attrs.update(attributes)
    return {"path": "0", "shape": list(field.shape), "checksum": array_checksum(values, array.chunks)}
