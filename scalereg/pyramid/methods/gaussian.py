"""Anti-aliased downsampling of intensity images: Gaussian, then average voxel pairs.

An output voxel covers ``f`` input voxels per axis and sits at their centre (see
`scalereg.omezarr.level_translation`).  The total smoothing is a Gaussian whose
FWHM is ``f`` input voxels (sigma^2 = (f^2 - 1) / (8 ln 2)); averaging the ``f``
voxels is itself a box filter of variance (f^2 - 1) / 12, so the Gaussian applied
before it carries only the remainder.  Filtering and averaging go axis by axis,
which shrinks the data after each axis and keeps the work near one pass.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

_TRUNCATE = 4.0


def gaussian_sigma(factor: int) -> float:
    """Sigma (in input voxels) of the Gaussian applied before averaging ``factor`` voxels."""
    if factor <= 1:
        return 0.0
    return math.sqrt((factor**2 - 1) * (1.0 / (8.0 * math.log(2.0)) - 1.0 / 12.0))


def gaussian_halo(factors: tuple[int, ...]) -> tuple[int, ...]:
    """Input voxels needed beyond a block's footprint on each side, per axis."""
    return tuple(int(_TRUNCATE * gaussian_sigma(f) + 0.5) if f > 1 else 0 for f in factors)


def downsample_gaussian(region: np.ndarray, factors: tuple[int, ...], halo: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Downsample ``region`` (the block's footprint plus ``halo`` on each side, edge-padded
    where it passes the volume boundary) by ``factors``; returns an array of ``dtype``."""
    work = region.astype(np.float32, copy=True)
    for axis, (factor, pad) in enumerate(zip(factors, halo)):
        if factor == 1:
            continue
        gaussian_filter1d(work, gaussian_sigma(factor), axis=axis, output=work, mode="nearest", truncate=_TRUNCATE)
        length = work.shape[axis] - 2 * pad
        work = np.take(work, np.arange(pad, pad + length), axis=axis)
        shape = work.shape[:axis] + (length // factor, factor) + work.shape[axis + 1 :]
        work = work.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
    return _cast(work, np.dtype(dtype))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)
