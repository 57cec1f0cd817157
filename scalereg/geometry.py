"""Where an image's voxels are in physical space.

A `Geometry` holds what OME-Zarr stores for level 0 of an image plus its anatomical
orientation:

- ``spacing``: voxel size along the array axes (z, y, x), in ``unit``;
- ``origin``: physical coordinate of the *centre* of voxel (0, 0, 0) along the array
  axes (the NGFF ``translation`` of that level);
- ``orientation``: the 3-letter code (see `scalereg.orientation`), or None if unknown.

The physical coordinate of index ``i`` along axis ``a`` is ``origin[a] + i *
spacing[a]``.  Anatomical LPS coordinates (what ITK/ANTs use) follow from the
orientation: ``lps = direction_matrix(orientation) @ (origin + index * spacing)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, TypeVar

import numpy as np

from scalereg.errors import InputError
from scalereg.orientation import direction_matrix, orientation_from_direction, parse_orientation

T = TypeVar("T")

# NGFF space units and their size in micrometers.
UNITS_IN_MICROMETERS: dict[str, float] = {
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
# Bounds of what any image's voxels and position can be, in micrometers.
SMALLEST_SPACING_UM = 1e-6
LARGEST_SPACING_UM = 1e6
LARGEST_ORIGIN_UM = 1e9
_UNIT_ALIASES = {
    "nm": "nanometer",
    "um": "micrometer",
    "µm": "micrometer",
    "micron": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}


def parse_unit(unit: str, subject: str = "unit") -> str:
    """Canonical NGFF name of a space unit ('um' -> 'micrometer')."""
    text = str(unit).strip().lower()
    text = _UNIT_ALIASES.get(text, text)
    if text not in UNITS_IN_MICROMETERS:
        raise InputError(subject, f"unknown unit {unit!r}: expected one of {sorted(UNITS_IN_MICROMETERS)}")
    return text


def parse_spacing(spacing: Sequence[float], subject: str = "spacing") -> tuple[float, float, float]:
    """Three positive finite voxel sizes (z, y, x)."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(subject, f"spacing {spacing!r} is not three numbers") from None
    if len(values) != 3:
        raise InputError(subject, f"spacing needs 3 values (z y x), got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(subject, f"spacing {values} must be positive and finite")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    unit: str = "micrometer"
    orientation: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", parse_spacing(self.spacing))
        try:
            origin = tuple(float(o) for o in self.origin)
        except (TypeError, ValueError):
            raise InputError("origin", f"origin {self.origin!r} is not three numbers") from None
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise InputError("origin", f"origin {tuple(map(float, origin))} must be three finite numbers")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "unit", parse_unit(self.unit))
        # a voxel size or a position no image has: a corrupt header, or a wrong unit
        scale = UNITS_IN_MICROMETERS[self.unit]
        if not all(SMALLEST_SPACING_UM <= s * scale <= LARGEST_SPACING_UM for s in self.spacing):
            raise InputError("spacing", f"spacing {self.spacing} {self.unit} is not a plausible voxel size (between 1 pm and 1 m)")
        if not all(abs(o) * scale <= LARGEST_ORIGIN_UM for o in origin):
            raise InputError("origin", f"origin {origin} {self.unit} is not a plausible position (more than 1 km from the scanner's origin)")
        if self.orientation is not None:
            object.__setattr__(self, "orientation", parse_orientation(self.orientation))

    def with_overrides(
        self,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        unit: str | None = None,
        orientation: str | None = None,
    ) -> "Geometry":
        """A copy with the given fields replaced (None keeps the current value)."""
        changes: dict = {}
        if spacing is not None:
            changes["spacing"] = parse_spacing(spacing)
        if origin is not None:
            changes["origin"] = tuple(origin)
        if unit is not None:
            changes["unit"] = parse_unit(unit)
        if orientation is not None:
            changes["orientation"] = parse_orientation(orientation)
        return replace(self, **changes)

    def direction(self) -> np.ndarray:
        """LPS direction matrix (columns: array axes z, y, x); identity-like if unknown."""
        if self.orientation is None:
            raise InputError("orientation", "image has no anatomical orientation; give one (e.g. --orientation asr)")
        return direction_matrix(self.orientation)

    def origin_lps(self) -> np.ndarray:
        """LPS position of the centre of voxel (0, 0, 0)."""
        return self.direction() @ np.asarray(self.origin)

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Array-aligned physical coordinates of (..., 3) indices (z, y, x)."""
        return np.asarray(self.origin) + np.asarray(index, dtype=float) * np.asarray(self.spacing)


def geometry_from_lps(
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    direction_lps: np.ndarray,
    unit: str,
    subject: str,
) -> Geometry:
    """Geometry from an ITK-style description (LPS origin, direction columns per array axis z, y, x).

    Oblique directions are snapped to the nearest orientation code; the rotation
    that is dropped is recorded in ``notes`` so that callers can warn.
    """
    code, angle = orientation_from_direction(direction_lps, subject)
    direction = direction_matrix(code)
    # origin along each array axis so that direction @ origin == origin_lps
    origin = direction.T @ np.asarray(origin_lps, dtype=float)
    notes: tuple[str, ...] = ()
    if angle > 1e-3:
        notes = (
            f"{subject}: oblique axes ({angle:.2f} degrees from {code!r}); "
            "the rotation was dropped and the nearest orientation code kept",
        )
    return named(subject, lambda: Geometry(spacing=parse_spacing(spacing, subject), origin=tuple(origin), unit=unit, orientation=code, notes=notes))


def named(subject: str, make: Callable[[], T]) -> T:
    """``make()``, with an InputError it raises about one of its fields ("spacing: ...")
    naming ``subject``, the input those values came from."""
    try:
        return make()
    except InputError as error:
        if error.subject == subject:
            raise
        raise InputError(subject, f"{error.subject}: {error.problem}") from None
