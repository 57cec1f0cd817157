"""Pyramid levels as ANTs images in LPS physical space, in micrometers."""

from __future__ import annotations

import os

# ITK reads its thread count when the library loads: set it before importing ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(max(1, len(os.sched_getaffinity(0)))))

import ants  # noqa: E402
import numpy as np  # noqa: E402

from scalereg.errors import InputError  # noqa: E402
from scalereg.geometry import UNITS_IN_MICROMETERS, Geometry  # noqa: E402


def to_ants_image(array: np.ndarray, geometry: Geometry, subject: str = "image") -> "ants.ANTsImage":
    """An ANTs image of a (z, y, x) array whose voxels sit where ``geometry`` says.

    ITK indexes (x, y, z) with x fastest, which is our array transposed; its
    direction columns are the LPS vectors of those axes; physical units are
    micrometers whatever the source unit, so fixed and moving always agree.
    """
    if geometry.orientation is None:
        raise InputError(subject, "no anatomical orientation: give one when converting (e.g. --orientation asr)")
    scale = UNITS_IN_MICROMETERS[geometry.unit]
    direction = geometry.direction()[:, ::-1]
    return ants.from_numpy(
        np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)),
        origin=tuple(float(v) for v in geometry.origin_lps() * scale),
        spacing=tuple(float(s) * scale for s in reversed(geometry.spacing)),
        direction=direction,
    )


def from_ants_image(image: "ants.ANTsImage") -> np.ndarray:
    """The (z, y, x) array of an ANTs image (scalar or the last axis for vector components)."""
    data = image.numpy()
    if image.components > 1:
        return np.ascontiguousarray(data.transpose(2, 1, 0, 3))
    return np.ascontiguousarray(data.transpose(2, 1, 0))
