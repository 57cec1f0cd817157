"""Plan a tiled warp: check the inputs, choose levels, size the tiles from the budget.

The plan is a `ConversionPlan` whose source is a `WarpedSource`: the output's tiles,
its pyramid, completion markers and resumption are those of any conversion.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scalereg.convert.plan_conversion import ConversionPlan, plan_conversion
from scalereg.convert.run_block import SCRATCH_DIR
from scalereg.errors import InputError
from scalereg.geometry import UNITS_IN_MICROMETERS
from scalereg.omezarr.pyramid_layout import PyramidLayout
from scalereg.omezarr.read_pyramid import level_fingerprint, read_pyramid
from scalereg.output_rules import check_apart
from scalereg.storage import join, normalize_uri, open_array
from scalereg.transforms.grid import GridMap, lps_bounds_um
from scalereg.transforms.transform_chain import TransformChain, load_transform_chain
from scalereg.units import parse_bytes
from scalereg.warp.interpolate import INTERPOLATIONS
from scalereg.warp.warped_source import SLAB_BYTES, WarpedSource

DEFAULT_WARP_BUDGET = "768MiB"
# The source region of a tile is the bounding box of its mapped voxels: rotations and
# deformations make it larger than the tile's own volume (times the zoom).
REGION_SLACK = 2.0
OVERLAP_LATTICE = 17


def plan_warp(
    transform: str | Sequence[str],
    moving: str,
    reference: str,
    output: str,
    *,
    level: int = 0,
    moving_level: int | None = None,
    interpolation: str = "linear",
    inverse: bool = False,
    output_dtype: str | None = None,
    memory_budget: str | int = DEFAULT_WARP_BUDGET,
    chunks: int | Sequence[int] | None = None,
    shards: int | Sequence[int] | None = None,
    background: float = 0.0,
    storage_options: dict[str, Any] | None = None,
) -> ConversionPlan:
    """Plan warping ``moving`` onto the grid of ``reference``'s level ``level``.

    ``transform`` is a scalereg transform directory (``inverse`` picks its inverse
    mapping: fixed-space images onto the moving grid) or ANTs transform files in
    ``ants.apply_transforms`` order.  ``moving_level`` defaults to the coarsest moving
    level that is still at least as fine as the output grid (level 0 when both
    pyramids have the same spacing).
    """
    moving, reference, output = normalize_uri(moving), normalize_uri(reference), normalize_uri(output)
    transforms = [transform] if isinstance(transform, str) else [str(t) for t in transform]
    inputs = (("moving input", moving), ("reference input", reference), *(("transform input", t) for t in transforms))
    check_apart(output, inputs)
    if interpolation not in INTERPOLATIONS:
        raise InputError("--interpolation", f"{interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    layouts = {"reference": read_pyramid(reference, storage_options), "moving": read_pyramid(moving, storage_options)}
    for role, uri in (("reference", reference), ("moving", moving)):
        status = (layouts[role].attributes.get("status") or {}).get("status")
        if status not in (None, "complete"):
            raise InputError(uri, "pyramid is marked incomplete; finish writing it first")
        if layouts[role].geometry.orientation is None:
            raise InputError(uri, "pyramid has no anatomical orientation; convert it again with --orientation")
    ref_layout, mov_layout = layouts["reference"], layouts["moving"]
    if not 0 <= level < len(ref_layout.levels):
        raise InputError("--level", f"reference {reference} has levels 0..{len(ref_layout.levels) - 1}, not {level}")
    ref_geometry = ref_layout.level_geometry(level)
    reference_grid = GridMap.of(ref_geometry, ref_layout.levels[level].shape)
    if moving_level is None:
        moving_level = _matching_level(mov_layout, reference_grid)
    elif not 0 <= moving_level < len(mov_layout.levels):
        raise InputError("--moving-level", f"moving {moving} has levels 0..{len(mov_layout.levels) - 1}, not {moving_level}")
    moving_grid = GridMap.of(mov_layout.level_geometry(moving_level), mov_layout.levels[moving_level].shape)

    moving_dtype = np.dtype(mov_layout.dtype)
    labels = interpolation == "label" or mov_layout.labels
    if mov_layout.labels and interpolation in ("linear", "bspline"):
        raise InputError(moving, f"is a label image: {interpolation} interpolation would invent labels; use --interpolation label (or nearest)")
    if interpolation == "label" and not np.issubdtype(moving_dtype, np.integer):
        raise InputError(moving, f"label interpolation needs an integer image, not {moving_dtype}")
    dtype = _output_dtype(output_dtype, moving_dtype, labels)

    # NIfTI fields are converted into the output's scratch space, removed when it is complete
    chain = load_transform_chain(transform, inverse=inverse, field_cache=join(output, SCRATCH_DIR, "fields"), storage_options=storage_options)
    if chain.manifest is not None:
        fixed_role, moving_role = ("moving", "fixed") if inverse else ("fixed", "moving")
        _check_same_space(reference, ref_layout, chain.manifest.get(fixed_role, {}), fixed_role, storage_options)
        _check_same_space(moving, mov_layout, chain.manifest.get(moving_role, {}), moving_role, storage_options)
    _check_overlap(chain, reference_grid, moving_grid, reference, moving, ref_layout, mov_layout)

    budget = parse_bytes(memory_budget)
    source = WarpedSource(
        uri=join(moving, mov_layout.levels[moving_level].path),
        shape=ref_layout.levels[level].shape,
        dtype=dtype,
        spacing=ref_geometry.spacing,
        origin=ref_geometry.origin,
        unit=ref_geometry.unit,
        orientation=ref_geometry.orientation,
        reference_grid=reference_grid,
        moving_grid=moving_grid,
        moving_dtype=moving_dtype,
        chain=chain,
        interpolation=interpolation,
        region_budget=budget // 2,
        background=background,
        storage_options=storage_options,
        notes=tuple(_notes(ref_layout, mov_layout, moving_level, reference, moving)),
        working_bytes_per_voxel=_working_bytes_per_voxel(chain, reference_grid, moving_grid, moving_dtype, interpolation),
        working_bytes_fixed=SLAB_BYTES,
        input_uris=inputs,
    )
    return plan_conversion(
        source,
        output,
        ngff_version=ref_layout.ngff_version,
        chunks=chunks or ref_layout.levels[level].chunks,
        shards=shards,
        labels=labels,
        memory_budget=budget,
        storage_options=storage_options,
    )


def _matching_level(layout: PyramidLayout, reference_grid: GridMap) -> int:
    """The coarsest level whose voxels are no larger than the output's smallest side."""
    finest_out = float(np.min(np.linalg.norm(reference_grid.matrix, axis=0)))
    scale = UNITS_IN_MICROMETERS[layout.geometry.unit]
    chosen = 0
    for index, level in enumerate(layout.levels):
        if max(level.scale) * scale <= finest_out * 1.01:
            chosen = index
    return chosen


def _output_dtype(requested: str | None, moving_dtype: np.dtype, labels: bool) -> np.dtype:
    if requested is None:
        return moving_dtype
    try:
        dtype = np.dtype(requested)
    except TypeError:
        raise InputError("--output-dtype", f"{requested!r} is not a numeric type (e.g. uint16, float32)") from None
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise InputError("--output-dtype", f"{requested!r} is not a supported numeric type (u/int 8-64 bits, float32/64)")
    if labels and dtype.kind == "f":
        raise InputError("--output-dtype", f"labels need an integer type, not {dtype}")
    return dtype


def _working_bytes_per_voxel(chain: TransformChain, reference: GridMap, moving: GridMap, moving_dtype: np.dtype, interpolation: str) -> float:
    """Memory a tile needs per output voxel while it is warped (see `WarpedSource`)."""
    out_volume = reference.voxel_volume_um3()
    zoom = abs(float(np.linalg.det(chain.linear_part().matrix))) or 1.0
    source_per_output = out_volume * zoom / moving.voxel_volume_um3()
    # the region as read, plus its float32 copy (none for float32 images) and B-spline coefficients
    per_region_voxel = moving_dtype.itemsize + (4 if interpolation in ("linear", "bspline") and moving_dtype != np.float32 else 0)
    per_region_voxel += 4 if interpolation == "bspline" else 0
    fields = sum(12 * out_volume / f.grid.voxel_volume_um3() for f in chain.fields())
    # coordinates (float32 x 3), the inside mask, the values before the cast
    return 12 + 1 + 4 + REGION_SLACK * (source_per_output * per_region_voxel + fields)


def _check_same_space(uri: str, layout: PyramidLayout, record: dict[str, Any], role: str, storage_options: dict[str, Any] | None) -> None:
    """Refuse a transform directory made for another pair of images.

    Another channel of the registered acquisition (or labels on the registered atlas)
    lies where the registered image did; a different brain does not.  An image at
    the registered image's own path must still have the same content.
    """
    if not record:
        return
    if uri == record.get("uri"):
        for path, digest in (record.get("fingerprints") or {}).items():
            array = open_array(join(uri, path), storage_options=storage_options)[:]
            if level_fingerprint(array) != digest:
                raise InputError(uri, f"has changed since the registration (level {path} differs from the {role} image the transform was computed for)")
            break  # one level is enough to tell
    bounds = record.get("lps_bounds_um")
    if not bounds:
        return
    ours = lps_bounds_um(layout.geometry, layout.levels[0].shape)
    scale = UNITS_IN_MICROMETERS[layout.geometry.unit]
    theirs_spacing = max(record.get("spacing") or [0.0]) * UNITS_IN_MICROMETERS.get(record.get("unit", "micrometer"), 1.0)
    tolerance = 2 * max(max(layout.geometry.spacing) * scale, theirs_spacing)
    difference = max(float(np.max(np.abs(ours[0] - np.asarray(bounds[0])))), float(np.max(np.abs(ours[1] - np.asarray(bounds[1])))))
    if difference > tolerance:
        raise InputError(
            uri,
            f"does not lie where the {role} image of this transform ({record.get('uri')}) did: their LPS extents differ by "
            f"{difference:.0f} um; the transform directory belongs to another pair (use --inverse to warp the other way)",
        )


def _check_overlap(chain: TransformChain, reference: GridMap, moving: GridMap, reference_uri: str, moving_uri: str, ref_layout: PyramidLayout, mov_layout: PyramidLayout) -> None:
    """Refuse a warp that would write only background: the reference grid, mapped by the
    transform's linear part, must land at least partly inside the moving image."""
    axes = [np.linspace(0, n - 1, min(n, OVERLAP_LATTICE)) for n in reference.shape]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    mapped_lps = chain.linear_part().map(reference.to_lps(lattice))
    units = {ref_layout.geometry.unit, mov_layout.geometry.unit}
    if len(units) > 1:
        # Mixed units are converted, but an image whose unit is wrong (micrometer
        # values labelled millimeter) is off by a factor of 1000: compare the sizes.
        ratio = _extent(mapped_lps) / max(_extent(moving.corners_lps()), 1e-9)
        if not 0.1 <= ratio <= 10:
            raise InputError(
                f"{reference_uri} / {moving_uri}",
                f"the reference is in {ref_layout.geometry.unit}s and the moving image in {mov_layout.geometry.unit}s, and "
                f"their extents differ {ratio:.3g}-fold once converted: check that both units are right",
            )
    if moving.inside(moving.to_index(mapped_lps)).any():
        return
    hint = (
        f"the reference is in {ref_layout.geometry.unit}s and the moving image in {mov_layout.geometry.unit}s: check that both units are right"
        if len(units) > 1
        else "check the transform's direction (--inverse), the images' origins and orientation codes"
    )
    raise InputError(f"{reference_uri} / {moving_uri}", f"the transform maps the whole reference grid outside the moving image; {hint}")


def _extent(points: np.ndarray) -> float:
    return float(np.linalg.norm(points.max(axis=1) - points.min(axis=1)))


def _notes(ref_layout: PyramidLayout, mov_layout: PyramidLayout, moving_level: int, reference: str, moving: str) -> list[str]:
    notes = []
    if ref_layout.geometry.unit != mov_layout.geometry.unit:
        notes.append(f"{reference} is in {ref_layout.geometry.unit}s, {moving} in {mov_layout.geometry.unit}s: both are used in micrometers")
    if moving_level:
        spacing = "x".join(f"{s:g}" for s in mov_layout.levels[moving_level].scale)
        notes.append(f"reading level {moving_level} of {moving} ({spacing} {mov_layout.geometry.unit}), the level that matches the output's spacing")
    return notes


__all__ = ["DEFAULT_WARP_BUDGET", "plan_warp"]
