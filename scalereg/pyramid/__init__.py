"""Multiscale pyramids: which levels to build and how to downsample a block."""

from scalereg.pyramid.downsample_block import downsample_block
from scalereg.pyramid.level_schedule import level_schedule

__all__ = ["downsample_block", "level_schedule"]
