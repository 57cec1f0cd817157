"""Anti-aliased downsampling of intensity images: Gaussian, then average voxel pairs.

An output voxel covers ``f`` input voxels per axis and sits at their centre (see
`scalereg.omezarr.level_translation`).  The total smoothing is a Gaussian whose
FWHM is ``f`` input voxels (sigma^2 = (f^2 - 1) / (8 ln 2)); averaging the ``f``
voxels is itself a box filter of variance (f^2 - 1) / 12, so the Gaussian applied
before it carries only the remainder.

Both filters are folded into one short kernel (the sampled Gaussian convolved with
the box) that is evaluated only where output voxels are, axis by axis: each axis
costs a handful of multiply-adds over the already shrunken data.  The first axis
casts each input plane to float32 once (no float copy of the block: a few planes
at a time); the last, contiguous axis is gathered once per phase so that its taps
are contiguous slices.  Per voxel the arithmetic is fixed (float32, symmetric taps
summed in pairs, in pair order), so the result does not depend on how it is sliced.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

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
    # integer input: the first axis's planes are cast to float32 once each, not once per tap
    planes = _FloatPlanes(region, factors[0], pad[0][0], step) if factors[0] > 1 and region.dtype != np.float32 else None
    for first in range(0, counts[0], step):
        last = min(first + step, counts[0])
        work = _filter_axis(region, 0, factors[0], pad[0][0], first, last, buffers, planes)
        for axis in range(1, region.ndim):
            work = _filter_axis(work, axis, factors[axis], pad[axis][0], 0, counts[axis], buffers)
        out[first:last] = _cast(work if work.dtype == np.float32 else work.astype(np.float32), np.dtype(dtype))
    return out


Taps = Callable[[int], np.ndarray]


def _filter_axis(
    work: np.ndarray,
    axis: int,
    factor: int,
    before: int,
    first: int,
    last: int,
    buffers: dict[tuple, np.ndarray],
    planes: "_FloatPlanes | None" = None,
) -> np.ndarray:
    """Outputs ``first:last`` along ``axis`` of the folded kernel applied to ``work``,
    whose voxel ``i`` along that axis is padded-region voxel ``i + before`` (indices
    outside ``work`` are clamped: edge padding).  Factor 1: the voxels themselves.
    ``planes``: the first axis's input planes as float32 (for integer input)."""
    if factor == 1:
        index = [slice(None)] * work.ndim
        index[axis] = slice(first - before, last - before)
        return work[tuple(index)]
    kernel = folded_kernel(factor)
    shape = list(work.shape)
    shape[axis] = last - first
    out = _buffer(buffers, "out", axis, shape)
    scratch = _buffer(buffers, "scratch", axis, shape)
    taps = len(kernel)
    if planes is not None:
        term = planes.taps(first, last)
    elif axis == work.ndim - 1 and last - first > 1:
        term = _phase_taps(work, factor, before, first, last, taps, buffers)
    else:
        term = _strided_taps(work, axis, factor, before, first, last)
    # the kernel is symmetric: w[t] (x[t] + x[-1-t]), a multiply per pair of taps
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


def _strided_taps(work: np.ndarray, axis: int, factor: int, before: int, first: int, last: int) -> Taps:
    """Tap ``t``: the voxels ``factor * j + t - before`` along ``axis`` for outputs
    ``j`` in ``first:last``, a strided view (a gathered copy at the volume boundary)."""
    n = work.shape[axis]
    outputs = np.arange(first, last)

    def term(tap: int) -> np.ndarray:
        positions = factor * outputs + tap - before
        if positions[0] >= 0 and positions[-1] < n:
            index = [slice(None)] * work.ndim
            index[axis] = slice(positions[0], positions[-1] + 1, factor)
            return work[tuple(index)]
        return np.take(work, np.clip(positions, 0, n - 1), axis=axis)  # at the volume boundary: edge padding

    return term


def _phase_taps(work: np.ndarray, factor: int, before: int, first: int, last: int, taps: int, buffers: dict[tuple, np.ndarray]) -> Taps:
    """Taps along the last (contiguous) axis: its voxels gathered once per phase
    (position modulo ``factor``) into contiguous arrays, so that every tap is a
    contiguous slice.  Adding strided views of the contiguous axis tap by tap took
    1.6x as long as one gather and contiguous adds."""
    axis = work.ndim - 1
    count = last - first + (taps - 1) // factor
    phases = []
    for phase in range(factor):
        target = _buffer(buffers, f"phase {phase}", axis, [*work.shape[:-1], count])
        _gather(work, axis, factor * np.arange(first, first + count) + phase - before, target)
        phases.append(target)

    def term(tap: int) -> np.ndarray:
        start = tap // factor
        return phases[tap % factor][..., start : start + last - first]

    return term


class _FloatPlanes:
    """The first axis's input planes as float32 for a run of slabs: each plane cast
    once, kept while a later slab still reads it, so that every tap is a strided view
    of float32 planes.  Casting integer voxels tap by tap (each input plane is read by
    several output planes) took 1.6x as long."""

    def __init__(self, region: np.ndarray, factor: int, before: int, step: int) -> None:
        self.region, self.factor, self.before = region, factor, before
        self.taps_count = len(folded_kernel(factor))
        need = factor * (step - 1) + self.taps_count  # planes one slab of `step` outputs reads
        self.window = np.empty((need + 4 * factor * step, *region.shape[1:]), dtype=np.float32)
        self.start = self.stop = 0  # padded-region planes start:stop are in window[: stop - start]

    def taps(self, first: int, last: int) -> Taps:
        lo, hi = self.factor * first, self.factor * (last - 1) + self.taps_count
        if not self.start <= lo <= self.stop:
            self.start = self.stop = lo
        if hi - self.start > len(self.window):  # move the planes still needed to the front
            kept = self.stop - lo
            self.window[:kept] = self.window[lo - self.start : self.stop - self.start]
            self.start = lo
        if hi > self.stop:
            _gather(self.region, 0, np.arange(self.stop, hi) - self.before, self.window[self.stop - self.start : hi - self.start])
            self.stop = hi
        offset, span = self.factor * first - self.start, self.factor * (last - first - 1) + 1

        def term(tap: int) -> np.ndarray:
            return self.window[offset + tap : offset + tap + span : self.factor]

        return term


def _gather(source: np.ndarray, axis: int, positions: np.ndarray, target: np.ndarray) -> None:
    """``target``'s voxel ``i`` along ``axis`` = ``source``'s voxel ``positions[i]``, clamped
    to ``source`` (edge padding), cast to ``target``'s dtype; ``positions`` is an
    increasing arithmetic progression: one strided copy, plus the clamped ends."""
    n = source.shape[axis]

    def along(index: slice) -> tuple[slice, ...]:
        key = [slice(None)] * source.ndim
        key[axis] = index
        return tuple(key)

    inside = np.flatnonzero((positions >= 0) & (positions < n))
    a, b = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
    if b > a:
        stride = int(positions[1] - positions[0]) if b - a > 1 else 1
        np.copyto(target[along(slice(a, b))], source[along(slice(positions[a], positions[b - 1] + 1, stride))], casting="unsafe")
    for i in [*range(a), *range(b, len(positions))]:
        edge = min(max(int(positions[i]), 0), n - 1)
        np.copyto(target[along(slice(i, i + 1))], source[along(slice(edge, edge + 1))], casting="unsafe")


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
