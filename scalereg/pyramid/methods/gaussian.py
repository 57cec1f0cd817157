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
from typing import Sequence

import numpy as np

_TRUNCATE = 4.0
# Bytes of float32 work per slab of output planes: small enough for the CPU's cache.
_SLAB_BYTES = 1 << 20


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
    kernel = np.convolve(gaussian, np.full(factor, 1.0 / factor))
    return ((kernel + kernel[::-1]) / 2).astype(np.float32)  # exactly symmetric


def downsample_gaussian(
    region: np.ndarray,
    factors: tuple[int, ...],
    halo: tuple[int, ...],
    dtype: np.dtype,
    pad: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Downsample ``region`` (the block's footprint plus ``halo`` on each side) by
    ``factors``; returns an array of ``dtype``.

    ``pad`` is the edge padding the footprint needs where it passes the volume boundary
    (voxels before and after, per axis): the region is read as if edge-padded, by
    clamping indices, never copied.

    The work goes slab by slab of output planes along the first axis, each slab small
    enough to stay in the CPU's cache through all three axes' filters: per slab, a few
    buffers are reused (no fresh allocation, no page faults, whatever the process's
    malloc settings) and no float copy of the whole block ever exists.  The arithmetic
    per voxel (float32, symmetric taps summed in pairs) is the same for any slab size.
    """
    pad = list(pad) if pad is not None else [(0, 0)] * region.ndim
    padded = [n + lo + hi for n, (lo, hi) in zip(region.shape, pad)]
    for factor, extra, n in zip(factors, halo, padded):
        kernel_length = len(folded_kernel(factor)) if factor > 1 else 1
        if kernel_length != 2 * extra + factor:
            raise ValueError(f"halo {extra} does not match the kernel for factor {factor}")
        if n < kernel_length:
            raise ValueError(f"a region of {n} voxels is too small for factor {factor} with halo {extra}")
    counts = [(n - 2 * extra) // factor for n, factor, extra in zip(padded, factors, halo)]
    out = np.empty(counts, dtype=dtype)
    if out.size == 0:
        return out
    plane_bytes = 4 * math.prod(region.shape[1:]) * max(1, factors[0])
    step = max(1, _SLAB_BYTES // plane_bytes)
    buffers: dict[tuple, np.ndarray] = {}
    for first in range(0, counts[0], step):
        last = min(first + step, counts[0])
        work = _filter_axis(region, 0, factors[0], pad[0][0], first, last, buffers)
        for axis in range(1, region.ndim):
            work = _filter_axis(work, axis, factors[axis], pad[axis][0], 0, counts[axis], buffers)
        out[first:last] = _cast(work if work.dtype == np.float32 else work.astype(np.float32), np.dtype(dtype))
    return out


def _filter_axis(
    work: np.ndarray, axis: int, factor: int, before: int, first: int, last: int, buffers: dict[tuple, np.ndarray]
) -> np.ndarray:
    """Outputs ``first:last`` along ``axis`` of the folded kernel applied to ``work``,
    whose voxel ``i`` along that axis is padded-region voxel ``i + before`` (indices
    outside ``work`` are clamped: edge padding).  Factor 1: the voxels themselves."""
    if factor == 1:
        index = [slice(None)] * work.ndim
        index[axis] = slice(first - before, last - before)
        return work[tuple(index)]
    kernel = folded_kernel(factor)
    shape = list(work.shape)
    shape[axis] = last - first
    out = _buffer(buffers, "out", axis, shape)
    scratch = _buffer(buffers, "scratch", axis, shape)
    n = work.shape[axis]
    outputs = np.arange(first, last)

    def term(tap: int) -> np.ndarray:
        positions = factor * outputs + tap - before
        if positions[0] >= 0 and positions[-1] < n:
            index = [slice(None)] * work.ndim
            index[axis] = slice(positions[0], positions[-1] + 1, factor)
            return work[tuple(index)]
        return np.take(work, np.clip(positions, 0, n - 1), axis=axis)  # at the volume boundary: edge padding

    # the kernel is symmetric: w[t] (x[t] + x[-1-t]), a multiply per pair of taps
    taps = len(kernel)
    for pair in range(taps // 2):
        target = out if pair == 0 else scratch
        np.add(term(pair), term(taps - 1 - pair), out=target, dtype=np.float32)
        target *= kernel[pair]
        if pair:
            out += scratch
    if taps % 2:
        np.multiply(term(taps // 2), kernel[taps // 2], out=scratch, dtype=np.float32)
        out += scratch
    return out


def _buffer(buffers: dict[tuple, np.ndarray], name: str, axis: int, shape: list[int]) -> np.ndarray:
    """The float32 scratch array ``name`` of an axis' pass, reused by the next slab of the same shape."""
    key = (name, axis, *shape)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype=np.float32)
    return buffers[key]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)
