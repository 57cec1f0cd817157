"""OME-Zarr (NGFF 0.4 and 0.5) pyramids: layout, creation, reading, validation."""

from scalereg.omezarr.create_pyramid_store import create_pyramid_store, mark_complete, mark_level_complete
from scalereg.omezarr.pyramid_layout import Level, PyramidLayout, level_translation, pyramid_layout
from scalereg.omezarr.read_pyramid import read_pyramid
from scalereg.omezarr.validate_pyramid import validate_pyramid

__all__ = [
    "Level",
    "PyramidLayout",
    "create_pyramid_store",
    "level_translation",
    "mark_complete",
    "mark_level_complete",
    "pyramid_layout",
    "read_pyramid",
    "validate_pyramid",
]
