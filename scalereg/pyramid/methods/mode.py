"""Downsampling of label images: the most frequent label of each group of voxels.

A label never becomes a value that was not in the input.  Ties go to the smallest
label, so the result does not depend on how the volume was split into blocks.
"""

from __future__ import annotations

import numpy as np


def downsample_mode(region: np.ndarray, factors: tuple[int, ...], halo: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Most frequent value of each ``factors``-shaped group of ``region`` (halo must be 0)."""
    if any(halo):
        raise ValueError("mode downsampling takes no halo")
    out_shape = tuple(n // f for n, f in zip(region.shape, factors))
    split = []
    for n, f in zip(out_shape, factors):
        split += [n, f]
    groups = region.reshape(split).transpose(0, 2, 4, 1, 3, 5).reshape(*out_shape, -1)
    size = groups.shape[-1]
    if size == 1:
        return groups[..., 0].astype(dtype, copy=False)
    ordered = np.sort(groups, axis=-1)
    # count, for each sorted position, how many members equal it; pairwise works
    # because groups hold at most 8 voxels
    counts = np.zeros(ordered.shape, dtype=np.uint8)
    for j in range(size):
        counts += ordered == ordered[..., j : j + 1]
    best = np.argmax(counts, axis=-1)  # first maximum: the smallest of tied labels
    return np.take_along_axis(ordered, best[..., None], axis=-1)[..., 0].astype(dtype, copy=False)
