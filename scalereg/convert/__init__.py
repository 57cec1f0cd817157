"""Converting volumes to OME-Zarr pyramids, block by block."""

from scalereg.convert.convert_volume import convert_volume, run_conversion
from scalereg.convert.output_state import finish_conversion, finish_level, output_state, prepare_output
from scalereg.convert.plan_conversion import ConversionPlan, LevelPlan, plan_conversion, resolve_geometry
from scalereg.convert.run_block import run_block

__all__ = [
    "ConversionPlan",
    "LevelPlan",
    "convert_volume",
    "finish_conversion",
    "finish_level",
    "output_state",
    "plan_conversion",
    "prepare_output",
    "resolve_geometry",
    "run_block",
    "run_conversion",
]
