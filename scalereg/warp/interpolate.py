"""Sampling a region of an image at continuous indices, the way ITK's interpolators do.

Points are (3, N) continuous (z, y, x) indices relative to the region's first voxel,
already known to lie in the image (ITK's [-0.5, n - 0.5) per axis).  Each method
reproduces its ITK counterpart (what ``ants.apply_transforms`` calls it):

- ``linear`` (linear): trilinear, neighbours clamped at the image border;
- ``bspline`` (bSpline): cubic B-spline with mirror boundaries; the caller reads
  `footprint` extra voxels around the points so that the prefilter's boundary
  effect at a region edge that is not an image edge stays below 1e-4 of the contrast;
- ``nearest`` (nearestNeighbor): the voxel at index floor(c + 0.5);
- ``label`` (genericLabel): for each label among the 8 neighbours, the sum of its
  trilinear weights; the label with the largest sum wins (the smallest on a tie).
  Only values present in the input ever come out.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
from scipy import ndimage

Interpolation = Literal["linear", "bspline", "nearest", "label"]
INTERPOLATIONS: tuple[str, ...] = ("linear", "bspline", "nearest", "label")
# 0.268^12 < 1e-6: the cubic prefilter's recursion forgets a cut region edge within this many voxels
BSPLINE_PREFILTER_MARGIN = 12


def footprint(method: str) -> tuple[int, int]:
    """Voxels needed before floor(c) and after it, beyond the points' own extent."""
    if method == "bspline":
        return 1 + BSPLINE_PREFILTER_MARGIN, 2 + BSPLINE_PREFILTER_MARGIN
    return 0, 1


def prepare_region(region: np.ndarray, method: str) -> np.ndarray:
    """What `sample` needs: float32 intensities, B-spline coefficients, or labels as they are."""
    if method in ("nearest", "label"):
        return region
    data = region.astype(np.float32, copy=False)
    if method == "bspline":
        return ndimage.spline_filter(data, order=3, mode="mirror", output=np.float32)
    return data


def sample(prepared: np.ndarray, points: np.ndarray, method: str) -> np.ndarray:
    """Values at ``points`` ((3, N) indices relative to the region `prepare_region` made)."""
    if method == "linear":
        return ndimage.map_coordinates(prepared, points, order=1, mode="nearest", prefilter=False, output=np.float32)
    if method == "bspline":
        # ITK mirrors at the image's borders, scipy at the array's: where the region ends
        # at an image border both agree; elsewhere the region has margin to spare
        return ndimage.map_coordinates(prepared, points, order=3, mode="mirror", prefilter=False, output=np.float32)
    if method == "nearest":
        index = np.floor(points + 0.5).astype(np.intp)
        for axis in range(3):
            np.clip(index[axis], 0, prepared.shape[axis] - 1, out=index[axis])
        return prepared[index[0], index[1], index[2]]
    if method == "label":
        return _generic_label(prepared, points)
    raise ValueError(f"unknown interpolation {method!r}")


def _generic_label(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    base = np.floor(points).astype(np.intp)
    fraction = (points - base).astype(np.float32)
    lower, upper, weight_upper = [], [], []
    for axis in range(3):
        n = labels.shape[axis]
        lower.append(np.clip(base[axis], 0, n - 1))
        upper.append(np.clip(base[axis] + 1, 0, n - 1))
        weight_upper.append(fraction[axis])
    corner_labels = []
    corner_weights = []
    for corner in itertools.product((0, 1), repeat=3):
        index = tuple((upper if bit else lower)[axis] for axis, bit in enumerate(corner))
        weight = np.ones(points.shape[1], dtype=np.float32)
        for axis, bit in enumerate(corner):
            weight *= weight_upper[axis] if bit else 1 - weight_upper[axis]
        corner_labels.append(labels[index])
        corner_weights.append(weight)
    scores = []
    for k in range(8):
        score = np.zeros(points.shape[1], dtype=np.float32)
        for j in range(8):
            score += corner_weights[j] * (corner_labels[j] == corner_labels[k])
        scores.append(score)
    best = np.max(scores, axis=0)
    result = corner_labels[0].copy()
    result_set = np.zeros(points.shape[1], dtype=bool)
    # among the labels whose weight is the largest, the smallest wins (ITK visits labels in order)
    for k in range(8):
        candidate = scores[k] >= best
        take = candidate & (~result_set | (corner_labels[k] < result))
        result[take] = corner_labels[k][take]
        result_set |= candidate
    return result
