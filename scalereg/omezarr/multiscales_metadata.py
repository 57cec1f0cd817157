"""NGFF multiscales metadata for a `PyramidLayout`, built with ome-zarr-models types."""

from __future__ import annotations

from typing import Any

from ome_zarr_models.v04.axes import Axis as AxisV04
from ome_zarr_models.v04.image import ImageAttrs as ImageAttrsV04
from ome_zarr_models.v04.multiscales import Dataset as DatasetV04
from ome_zarr_models.v04.multiscales import Multiscale as MultiscaleV04
from ome_zarr_models.v05.axes import Axis as AxisV05
from ome_zarr_models.v05.image import ImageAttrs as ImageAttrsV05
from ome_zarr_models.v05.multiscales import Dataset as DatasetV05
from ome_zarr_models.v05.multiscales import Multiscale as MultiscaleV05

from scalereg.omezarr.pyramid_layout import AXES, PyramidLayout
from scalereg.orientation import orientation_to_rfc4


def multiscales_metadata(layout: PyramidLayout) -> dict[str, Any]:
    """Group attributes that make ``layout`` an OME-Zarr image (``multiscales`` for
    0.4, ``ome`` for 0.5), with RFC-4 anatomical orientation on the space axes."""
    geometry = layout.geometry
    orientation = orientation_to_rfc4(geometry.orientation) if geometry.orientation else [None] * 3
    axis_fields = []
    for name, orient in zip(AXES, orientation):
        fields: dict[str, Any] = {"name": name, "type": "space", "unit": geometry.unit}
        if orient is not None:
            fields["orientation"] = orient
        axis_fields.append(fields)
    method = "mode" if layout.labels else "gaussian"
    metadata = {"method": f"scalereg.pyramid.methods.{method}", "description": _method_description(layout.labels)}
    if layout.ngff_version == "0.4":
        multiscale = MultiscaleV04(
            version="0.4",
            name=layout.name,
            type=method,
            metadata=metadata,
            axes=[AxisV04(**f) for f in axis_fields],
            datasets=tuple(DatasetV04.build(path=l.path, scale=l.scale, translation=l.translation) for l in layout.levels),
        )
        return ImageAttrsV04(multiscales=[multiscale]).model_dump(mode="json", exclude_none=True)
    multiscale = MultiscaleV05(
        name=layout.name,
        type=method,
        metadata=metadata,
        axes=[AxisV05(**f) for f in axis_fields],
        datasets=tuple(DatasetV05.build(path=l.path, scale=l.scale, translation=l.translation) for l in layout.levels),
    )
    return {"ome": ImageAttrsV05(version="0.5", multiscales=[multiscale]).model_dump(mode="json", exclude_none=True)}


def _method_description(labels: bool) -> str:
    if labels:
        return "most frequent label of each group of voxels (ties: smallest label)"
    return "Gaussian (FWHM = factor) then mean of each group of voxels; voxel centres at group centres"
