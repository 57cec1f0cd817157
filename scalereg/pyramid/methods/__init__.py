"""Downsampling methods, one module each: gaussian (intensities) and mode (labels)."""

from scalereg.pyramid.methods.gaussian import downsample_gaussian, gaussian_halo
from scalereg.pyramid.methods.mode import downsample_mode

METHODS = {"gaussian": downsample_gaussian, "mode": downsample_mode}

__all__ = ["METHODS", "downsample_gaussian", "downsample_mode", "gaussian_halo"]
