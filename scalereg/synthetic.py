"""Known deformations of real volumes, for accuracy tests and benchmarks.

`deform` applies a known affine plus a smooth nonlinear displacement to a volume
(and, with nearest-neighbour interpolation, to its labels), so that a registration
can be scored against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalereg.geometry import Geometry
from scalereg.register.ants_image import ants, from_ants_image, to_ants_image


@dataclass(frozen=True)
class KnownDeformation:
    """Files of a known transform T (apply order: the warp, then the affine)."""

    affine: str
    warp: str

    @property
    def forward(self) -> list[str]:
        return [self.warp, self.affine]


def make_deformation(
    reference: "ants.ANTsImage",
    workdir: str | Path,
    rotation_degrees: float = 6.0,
    scale: float = 1.05,
    shift_um: float = 300.0,
    warp_um: float = 150.0,
    wavelength_um: float = 3000.0,
    seed: int = 0,
) -> KnownDeformation:
    """A rotation about the image centre, a scaling, a shift and a smooth sinusoidal
    displacement field (amplitude ``warp_um``), all defined on ``reference``'s grid."""
    rng = np.random.default_rng(seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rotation_degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    centre = np.asarray(reference.origin) + np.asarray(reference.direction) @ (np.asarray(reference.spacing) * (np.asarray(reference.shape) - 1) / 2)
    affine = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=rotation * scale,
        center=tuple(centre),
        offset=tuple(rng.uniform(-1, 1, size=3) * shift_um),
    )
    affine_path = str(workdir / "true_affine.mat")
    ants.write_transform(affine, affine_path)
    # displacement in LPS micrometers, a smooth function of the physical position
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reference.shape], indexing="ij"), axis=-1).astype(np.float32)
    physical = index * np.asarray(reference.spacing, dtype=np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    field = np.zeros(reference.shape + (3,), dtype=np.float32)
    for component in range(3):
        other = (component + 1) % 3
        field[..., component] = warp_um * np.sin(2 * np.pi * physical[..., other] / wavelength_um + phases[component])
    warp = ants.from_numpy(field, origin=reference.origin, spacing=reference.spacing, direction=reference.direction, has_components=True)
    warp_path = str(workdir / "true_warp.nii.gz")
    ants.image_write(warp, warp_path)
    return KnownDeformation(affine=affine_path, warp=warp_path)


def deform(volume: np.ndarray, geometry: Geometry, truth: KnownDeformation, labels: bool = False) -> np.ndarray:
    """``volume`` resampled through ``truth``: the result shows at q what ``volume``
    shows at T(q).  A perfect registration R of the result (moving) to ``volume``
    (fixed) satisfies T(R(p)) = p for every fixed point p."""
    image = to_ants_image(volume.astype(np.float32), geometry)
    moved = ants.apply_transforms(image, image, truth.forward, interpolator="genericLabel" if labels else "linear")
    out = from_ants_image(moved)
    if labels or np.issubdtype(volume.dtype, np.integer):
        out = np.rint(out)
    return out.astype(volume.dtype)


def residual_um(points_lps: np.ndarray, recovered_forward: list[str], truth: KnownDeformation) -> np.ndarray:
    """|T(R(p)) - p| in micrometers for fixed-space LPS points p (N x 3)."""
    import pandas as pd

    frame = pd.DataFrame(points_lps, columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, frame, [*recovered_forward, *truth.forward]).values
    return np.linalg.norm(mapped - points_lps, axis=1)
