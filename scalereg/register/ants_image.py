"""Pyramid levels as ANTs images in LPS physical space, in micrometers."""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Any

import numpy as np

from scalereg.errors import InputError
from scalereg.geometry import UNITS_IN_MICROMETERS, Geometry, geometry_from_lps

_loading = threading.Lock()


def load_ants() -> ModuleType:
    """ANTs (antspyx), imported on first call: about a second and 0.2 GiB (ITK's
    libraries, and pandas, scikit-learn and matplotlib that antspyx imports), which a
    process that only plans registration steps (a flow's driver) never needs."""
    with _loading:
        # ITK reads its thread count when the library loads: set it before importing ants.
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(max(1, len(os.sched_getaffinity(0)))))
        return importlib.import_module("ants")


class _Ants:
    """The ``ants`` module, imported when an attribute is first used (`load_ants`)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(load_ants(), name)


ants: Any = _Ants()


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


def geometry_from_ants_header(spacing: tuple, origin: tuple, direction: np.ndarray, subject: str) -> Geometry:
    """The `Geometry` (micrometers) of an ITK image given as ITK describes it: spacing,
    LPS origin and direction columns in (x, y, z) index order."""
    return geometry_from_lps(
        tuple(float(s) for s in reversed(spacing)),
        np.asarray(origin, dtype=float),
        np.asarray(direction, dtype=float)[:, ::-1],
        "micrometer",
        subject,
    )


def ants_image_geometry(image: "ants.ANTsImage", subject: str = "image") -> Geometry:
    """Where the voxels of an ANTs image are, as a `Geometry` in micrometers."""
    return geometry_from_ants_header(image.spacing, image.origin, np.asarray(image.direction), subject)
