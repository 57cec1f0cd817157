"""Pick the pyramid level whose spacing is closest to a step's target spacing."""

from __future__ import annotations

import math

from scalereg.geometry import UNITS_IN_MICROMETERS
from scalereg.omezarr.pyramid_layout import PyramidLayout

# Farther than half an octave from the target: say so.
_NEAR = math.sqrt(2.0) * 1.001


def level_spacing_um(layout: PyramidLayout, index: int) -> float:
    """A level's coarsest voxel size in micrometers (what limits what it can resolve)."""
    return max(layout.levels[index].scale) * UNITS_IN_MICROMETERS[layout.geometry.unit]


def choose_level(layout: PyramidLayout, target_um: float, subject: str) -> tuple[int, str | None]:
    """Index of the level closest to ``target_um`` (in log spacing) and a note when it is not near."""
    distances = [abs(math.log(level_spacing_um(layout, i) / target_um)) for i in range(len(layout.levels))]
    index = min(range(len(distances)), key=distances.__getitem__)
    have = level_spacing_um(layout, index)
    note = None
    if max(have / target_um, target_um / have) > _NEAR:
        note = f"{subject}: no level near {target_um:g} um; using level {layout.levels[index].path} at {have:g} um"
    return index, note
