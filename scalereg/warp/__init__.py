"""Tiled warping of full-resolution volumes (and labels) through registration transforms."""

from scalereg.warp.plan_warp import DEFAULT_WARP_BUDGET, plan_warp
from scalereg.warp.warp_volume import warp_volume
from scalereg.warp.warped_source import WarpedSource

__all__ = ["DEFAULT_WARP_BUDGET", "WarpedSource", "plan_warp", "warp_volume"]
