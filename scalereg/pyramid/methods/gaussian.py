"""Anti-aliased downsampling of intensity images: Gaussian, then average voxel pairs.

An output voxel covers ``f`` input voxels per axis and sits at their centre (see
`scalereg.omezarr.level_translation`).  The total smoothing is a Gaussian whose
FWHM is ``f`` input voxels (sigma^2 = (f^2 - 1) / (8 ln 2)); averaging the ``f``
voxels is itself a box filter of variance (f^2 - 1) / 12, so the Gaussian applied
before it carries only the remainder.

Both filters are folded into one short kernel (the sampled Gaussian convolved with
the box) that is evaluated only where output voxels are, axis by axis: each axis
costs a handful of strided multiply-adds over the already shrunken data, and the
first one reads the input dtype directly, without a float copy of the block.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_TRUNCATE = 4.0


def gaussian_sigma(factor: int) -> float:
    """Sigma (in input voxels) of the Gaussian applied before averaging ``factor`` voxels."""
    if factor <= 1:
        return 0.0
    return math.sqrt((factor**2 - 1) * (1.0 / (8.0 * math.log(2.0)) - 1.0 / 12.0))


def gaussian_halo(factors: tuple[int, ...]) -> tuple[int, ...]:
    """Input voxels needed beyond a block's footprint on each side, per axis."""
    return tuple(int(_TRUNCATE * gaussian_sigma(f) + 0.5) if f > 1 else 0 for f in factors)


@lru_cache(maxsize=8)
def folded_kernel(factor: int) -> np.ndarray:
    """Weights of input voxels ``factor*j - halo ... factor*j + factor - 1 + halo`` for output ``j``:
    the normalised sampled Gaussian (as scipy.ndimage.gaussian_filter1d builds it)
    convolved with the ``factor``-voxel box."""
    sigma = gaussian_sigma(factor)
    radius = int(_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    gaussian = np.exp(-0.5 * (offsets / sigma) ** 2)
    gaussian /= gaussian.sum()
    return np.convolve(gaussian, np.full(factor, 1.0 / factor)).astype(np.float32)


def downsample_gaussian(region: np.ndarray, factors: tuple[int, ...], halo: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Downsample ``region`` (the block's footprint plus ``halo`` on each side, edge-padded
    where it passes the volume boundary) by ``factors``; returns an array of ``dtype``."""
    work: np.ndarray = region
    for axis, (factor, pad) in enumerate(zip(factors, halo)):
        if factor == 1:
            continue
        kernel = folded_kernel(factor)
        if len(kernel) != 2 * pad + factor:
            raise ValueError(f"halo {pad} does not match the kernel for factor {factor}")
        count = (work.shape[axis] - 2 * pad) // factor
        out = None
        for tap, weight in enumerate(kernel):
            index = [slice(None)] * work.ndim
            index[axis] = slice(tap, tap + factor * count, factor)
            term = work[tuple(index)]
            if out is None:
                out = np.multiply(term, weight, dtype=np.float32)
            else:
                out += np.multiply(term, weight, dtype=np.float32)
        work = out  # type: ignore[assignment]
    if work is region:
        work = region.astype(np.float32)
    return _cast(work, np.dtype(dtype))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)
