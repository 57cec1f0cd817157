"""Which downsampling factor each pyramid level applies along each axis."""

from __future__ import annotations

import math
from typing import Sequence


def level_schedule(
    shape: Sequence[int],
    spacing: Sequence[float],
    min_size: int = 32,
    max_levels: int | None = None,
) -> list[tuple[int, int, int]]:
    """Per-level factors (relative to the previous level) for an anisotropy-aware pyramid.

    An axis is halved only while its spacing is less than twice the finest spacing
    of that level, so a 4 x 1 x 1 um lightsheet volume gives (1, 2, 2), (1, 2, 2),
    then (2, 2, 2) once x and y have caught up with z.  Levels are added while the
    next level's smallest axis would still have at least ``min_size`` voxels (and
    while an axis can be halved at all).  Level 0 (factors 1, 1, 1) is not listed.
    """
    shape = [int(s) for s in shape]
    spacing = [float(s) for s in spacing]
    levels: list[tuple[int, int, int]] = []
    while max_levels is None or len(levels) + 1 < max_levels:
        finest = min(spacing)
        factors = tuple(2 if s < 2 * finest * (1 - 1e-9) and n > 1 else 1 for s, n in zip(spacing, shape))
        if all(f == 1 for f in factors):
            break
        next_shape = [math.ceil(n / f) for n, f in zip(shape, factors)]
        if min(next_shape) < min_size:
            break
        levels.append(factors)  # type: ignore[arg-type]
        shape = next_shape
        spacing = [s * f for s, f in zip(spacing, factors)]
    return levels
