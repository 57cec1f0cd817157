"""Map point coordinates (cell detections) between the fixed and the moving space.

A registration's forward chain maps fixed points to moving points (that is how the
moving image is sampled onto the fixed grid), so points detected in the moving
image (a sample) reach the fixed space (an atlas) through the *inverse* chain, and
the other way round; `transform_points` picks the right one from ``source_space``.

Coordinates are ``voxel`` (z, y, x indices into level 0 of an OME-Zarr image),
``physical`` (z, y, x in that image's OME-Zarr physical frame and unit: what
napari shows with the image's scale and translation) or ``lps`` (x, y, z LPS
micrometers, ANTs' frame; no image needed).

Each point is flagged ``outside_field`` when it fell outside a displacement field
the chain goes through (it then moves by the affine parts only, as ANTs does) and
``outside_image`` when its result lies outside the target image.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from scalereg.errors import InputError
from scalereg.omezarr.read_pyramid import read_pyramid
from scalereg.storage import normalize_uri
from scalereg.transforms.grid import GridMap
from scalereg.transforms.transform_chain import TransformChain, is_transform_directory, load_transform_chain

Coordinates = Literal["voxel", "physical", "lps"]
COORDINATES: tuple[str, ...] = ("voxel", "physical", "lps")
# Points mapped per batch (sorted along z, so that each batch needs a slab of the fields).
BATCH = 200_000


@dataclass(frozen=True)
class MappedPoints:
    points: np.ndarray  # (N, 3) in the requested coordinates of the target space
    outside_field: np.ndarray  # (N,) bool
    outside_image: np.ndarray | None  # (N,) bool, None without a target image
    source_image: str | None
    target_image: str | None


def transform_points(
    points: np.ndarray,
    transform: str | Sequence[str],
    *,
    source_space: Literal["moving", "fixed"] = "moving",
    coordinates: Coordinates = "voxel",
    source_image: str | None = None,
    target_image: str | None = None,
) -> MappedPoints:
    """Map (N, 3) ``points`` given in ``source_space`` to the other space.

    With a transform directory the images default to the registered pair; with ANTs
    files (in the order ``ants.apply_transforms_to_points`` takes them) give
    ``source_image``/``target_image`` for voxel or physical coordinates.
    """
    if coordinates not in COORDINATES:
        raise InputError("--coordinates", f"{coordinates!r} is not one of {', '.join(COORDINATES)}")
    if source_space not in ("moving", "fixed"):
        raise InputError("--from", f"{source_space!r} is not 'moving' or 'fixed'")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError("points", f"expected N x 3 coordinates, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        row = int(np.argwhere(~np.all(np.isfinite(points), axis=1))[0][0])
        raise InputError("points", f"row {row} has a missing or non-finite coordinate")
    cache = tempfile.mkdtemp(prefix="scalereg-fields-")
    try:
        if is_transform_directory(transform):
            # points from moving space go through the inverse chain (see the module doc)
            chain = load_transform_chain(transform, inverse=source_space == "moving", field_cache=cache)
            assert chain.manifest is not None
            target_space = "fixed" if source_space == "moving" else "moving"
            source_image = source_image or (chain.manifest.get(source_space) or {}).get("uri") or None
            target_image = target_image or (chain.manifest.get(target_space) or {}).get("uri") or None
        elif source_space != "moving":
            raise InputError("--from", "applies to a scalereg transform directory; for ANTs files list the transforms for the direction you need")
        else:
            chain = load_transform_chain(transform, field_cache=cache)
        chain.convert_fields()
        source_grid = _grid(source_image, coordinates, "source")
        target_grid = _grid(target_image, coordinates, "target")
        lps = _to_lps(points, coordinates, source_grid)
        mapped, outside_field = _map_in_batches(chain, lps)
        result = _from_lps(mapped, coordinates, target_grid)
        outside_image = None
        if target_grid is not None:
            index = result if coordinates == "voxel" else target_grid.to_index(mapped.T).T
            outside_image = ~target_grid.inside(index.T)
        return MappedPoints(result, outside_field, outside_image, source_image, target_image)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _grid(uri: str | None, coordinates: str, role: str) -> GridMap | None:
    if uri is None:
        if coordinates != "lps":
            raise InputError(f"--{role}-image", f"{coordinates} coordinates need the {role} image (an OME-Zarr pyramid)")
        return None
    layout = read_pyramid(normalize_uri(uri))
    return GridMap.of(layout.geometry, layout.levels[0].shape)


def _to_lps(points: np.ndarray, coordinates: str, grid: GridMap | None) -> np.ndarray:
    if coordinates == "lps":
        return points
    assert grid is not None
    index = points if coordinates == "voxel" else _physical_to_index(points, grid)
    return grid.to_lps(index.T).T


def _from_lps(lps: np.ndarray, coordinates: str, grid: GridMap | None) -> np.ndarray:
    if coordinates == "lps":
        return lps
    assert grid is not None
    index = grid.to_index(lps.T).T
    return index if coordinates == "voxel" else _index_to_physical(index, grid)


def _physical_to_index(points: np.ndarray, grid: GridMap) -> np.ndarray:
    """From the grid's own (OME-Zarr) physical frame and unit to indices."""
    return (points - grid.physical_origin) / grid.physical_spacing


def _index_to_physical(index: np.ndarray, grid: GridMap) -> np.ndarray:
    return grid.physical_origin + index * grid.physical_spacing


def _map_in_batches(chain: TransformChain, lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(lps[:, 2], kind="stable")
    mapped = np.empty_like(lps)
    outside = np.zeros(len(lps), dtype=bool)
    for start in range(0, len(order), BATCH):
        chosen = order[start : start + BATCH]
        batch = lps[chosen]
        chain.prepare(batch.min(axis=0), batch.max(axis=0))
        flags = np.zeros(len(chosen), dtype=bool)
        mapped[chosen] = chain.map(batch.T, outside_field=flags).T
        outside[chosen] = flags
    return mapped, outside
