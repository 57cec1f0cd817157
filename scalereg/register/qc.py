"""Quality control of a registration step: similarity, folding, pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalereg.register.ants_image import ants, from_ants_image


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two arrays of the same shape."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Mutual information (nats) of the joint intensity histogram."""
    joint, _, _ = np.histogram2d(np.asarray(a).ravel(), np.asarray(b).ravel(), bins=bins)
    joint = joint / max(joint.sum(), 1)
    pa = joint.sum(axis=1, keepdims=True)
    pb = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])).sum())


def similarity(fixed: np.ndarray, moving: np.ndarray) -> dict[str, float]:
    return {"ncc": round(ncc(fixed, moving), 6), "mi": round(mutual_information(fixed, moving), 6)}


def jacobian_stats(warp_file: str, domain: "ants.ANTsImage", mask: np.ndarray | None = None) -> dict[str, float]:
    """Determinant of the Jacobian of a displacement field: min, max, and the percent
    of voxels where it is <= 0 (folding), inside ``mask`` when given."""
    jacobian = from_ants_image(ants.create_jacobian_determinant_image(domain, warp_file, do_log=False))
    values = jacobian[mask] if mask is not None and mask.any() else jacobian.ravel()
    return {
        "jacobian_min": round(float(values.min()), 6),
        "jacobian_max": round(float(values.max()), 6),
        "jacobian_percent_nonpositive": round(100.0 * float((values <= 0).mean()), 6),
    }


def foreground(image: np.ndarray) -> np.ndarray:
    """A rough tissue mask: voxels above the mean intensity (robust for brains on dark background)."""
    return image > image.mean()


def _normalise(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99.5])
    return np.clip((image - low) / max(high - low, 1e-12), 0, 1)


def _mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    z, y, x = (n // 2 for n in volume.shape)
    return [volume[z], volume[:, y], volume[:, :, x]]


def _checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    size = max(1, max(a.shape) // squares)
    rows, cols = np.indices(a.shape)
    board = ((rows // size + cols // size) % 2).astype(bool)
    return np.where(board, a, b)


def _edges(image: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(image)
    magnitude = np.hypot(gx, gy)
    return magnitude > np.percentile(magnitude, 92)


def qc_picture(
    fixed: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    spacing: tuple[float, float, float],
    path: str | Path,
    title: str,
) -> str:
    """PNG: three orthogonal mid-slices, checkerboard and fixed-edge overlay, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed_n, before_n, after_n = (_normalise(v) for v in (fixed, before, after))
    aspects = [spacing[1] / spacing[2], spacing[0] / spacing[2], spacing[0] / spacing[1]]
    names = ["axis 0 mid-slice", "axis 1 mid-slice", "axis 2 mid-slice"]
    figure, axes = plt.subplots(2, 6, figsize=(18, 6.5))
    for row, (label, moving) in enumerate((("before", before_n), ("after", after_n))):
        for column, (f, m, aspect, name) in enumerate(zip(_mid_slices(fixed_n), _mid_slices(moving), aspects, names)):
            ax = axes[row, column]
            ax.imshow(_checkerboard(f, m), cmap="gray", aspect=aspect, interpolation="nearest")
            ax.set_title(f"{label}: checkerboard, {name}", fontsize=8)
            ax = axes[row, column + 3]
            ax.imshow(m, cmap="gray", aspect=aspect, interpolation="nearest")
            overlay = np.zeros(f.shape + (4,))
            overlay[_edges(f)] = (1.0, 0.2, 0.2, 0.9)
            ax.imshow(overlay, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{label}: moving + fixed edges, {name}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return str(path)

