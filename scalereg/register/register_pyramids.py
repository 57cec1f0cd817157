"""Coarse-to-fine registration of two OME-Zarr pyramids with ANTs, step by step.

The transform directory it writes (``out``)::

    manifest.json                 written last: its presence means the directory is complete; it
                                  records the checksums of every file it lists (`scalereg validate`)
    forward/affine.mat            linear part, fixed -> moving points (ANTs format)
    forward/warp.nii.gz           all displacement fields composed, on the finest SyN step's fixed grid
    inverse/inverse_warp.nii.gz   their inverse, on the same grid
    field.ome.zarr                forward/warp as OME-Zarr (axes c, z, y, x; LPS micrometers)
    inverse_field.ome.zarr        inverse/inverse_warp as OME-Zarr
    steps/NN-<transform>-<um>um/  each step's own transforms, qc.json and qc.png

A fixed-space point p maps to moving space as ``affine(p + field(p))``:
``ants.apply_transforms(fixed, moving, [forward/warp.nii.gz, forward/affine.mat])``
resamples the moving image onto the fixed grid; ``[forward/affine.mat,
inverse/inverse_warp.nii.gz]`` with ``whichtoinvert=[True, False]`` goes back.
Physical units are micrometers in LPS, whatever the pyramids' units.

``out`` may be in a bucket (s3://): ANTs reads and writes only local files, so each
step works in a local directory on the worker that runs it (fetching the earlier
steps' transforms into the worker-local cache) and uploads its files, its record
last; records name files relative to ``out``, so any worker can resume any step.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from scalereg import __version__
from scalereg.errors import InputError
from scalereg.budgets import REGISTRATION_BUDGET as DEFAULT_MEMORY_BUDGET
from scalereg.heap import heap_for_mid_size_allocations, release_free_memory
from scalereg.measure import Measured
from scalereg.omezarr.pyramid_layout import PyramidLayout
from scalereg.omezarr.read_pyramid import level_fingerprint, read_pyramid
from scalereg.omezarr.write_vector_field import write_vector_field
from scalereg.register.ants_image import ants, ants_image_geometry, from_ants_image, to_ants_image
from scalereg.register.choose_level import choose_level
from scalereg.register.plan_registration import PlannedStep, RegistrationPlan, plan_registration
from scalereg.register.qc import foreground, jacobian_stats, qc_picture, similarity
from scalereg.register.run_ants_step import run_ants_step
from scalereg.register.schedule import RegistrationSchedule, load_schedule
from scalereg.local_cache import local_copy, scratch_dir
from scalereg.output_lock import OutputLock
from scalereg.output_rules import check_apart, existing_output
from scalereg.storage import exists, filesystem, is_remote, join, normalize_uri, open_array, output_uri, read_bytes, redact_uri, write_bytes
from scalereg.storage_errors import storage_errors
from scalereg.transforms.grid import lps_bounds_um
from scalereg.transforms.transform_checksums import ALGORITHMS as CHECKSUM_ALGORITHMS
from scalereg.transforms.transform_checksums import file_checksum
from scalereg.units import format_bytes, parse_bytes

MANIFEST = "manifest.json"
# A step is rejected when its own metric gets worse by more than this (relative).
WORSE_TOLERANCE = 1e-4
MIN_OVERLAP = 0.05


def register_pyramids(
    fixed: str,
    moving: str,
    out: str,
    schedule: str | Path | dict | RegistrationSchedule | None = None,
    memory_budget: str | int = DEFAULT_MEMORY_BUDGET,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    normalize: bool = False,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    overwrite: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Register the ``moving`` pyramid to the ``fixed`` one; returns the manifest.

    ``schedule`` is 'mouse' (default), 'human', a YAML/JSON file, a dict or a
    `RegistrationSchedule`.  Steps run from coarse to fine, each started from the
    transform the earlier ones found; the plan stops at the finest step that fits
    ``memory_budget``.  Masks are OME-Zarr label/binary pyramids on the same grid as
    their image.  ``normalize`` clips intensities to ``clip_percentiles`` and scales
    them to [0, 1] (bright vessels, saturated spots in lightsheet data).  A step that
    was already completed for the same inputs (an interrupted run) is reused.
    """
    root = output_uri(out)
    check_apart(root, registration_inputs(normalize_uri(fixed), normalize_uri(moving), schedule, fixed_mask, moving_mask))  # before its lock is made
    # held while the directory is written: a second writer, here or in a flow, is refused naming this one
    with OutputLock(root, run="scalereg.register.register_pyramids (Python)"):
        run = RegistrationRun(fixed, moving, out, schedule, memory_budget, fixed_mask, moving_mask, normalize, clip_percentiles, overwrite)
        if run.manifest() is not None:
            return run.manifest()  # type: ignore[return-value]
        for index in range(len(run.plan.steps)):
            result = run.run_step(index)
            if on_step:
                on_step(result)
        return run.finish()


class RegistrationRun:
    """One registration, step by step: the unit a flow runs as one task per step.

    Constructing it checks the inputs, plans the steps and prepares the transform
    directory (resuming one written for the same inputs).  `run_step` runs (or reuses)
    one step, starting from what the earlier steps recorded on disk, so steps may run
    in different processes; `finish` writes the outputs and the manifest, last.
    The object is small and picklable.
    """

    def __init__(
        self,
        fixed: str,
        moving: str,
        out: str,
        schedule: str | Path | dict | RegistrationSchedule | None = None,
        memory_budget: str | int = DEFAULT_MEMORY_BUDGET,
        fixed_mask: str | None = None,
        moving_mask: str | None = None,
        normalize: bool = False,
        clip_percentiles: tuple[float, float] = (0.5, 99.5),
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.fixed, self.moving, self.root = normalize_uri(fixed), normalize_uri(moving), output_uri(out)
        self.storage_options = storage_options
        check_apart(self.root, registration_inputs(self.fixed, self.moving, schedule, fixed_mask, moving_mask))
        self.layouts = {"fixed": read_pyramid(self.fixed, storage_options), "moving": read_pyramid(self.moving, storage_options)}
        for name, layout in self.layouts.items():
            status = (layout.attributes.get("status") or {}).get("status")
            if status not in (None, "complete"):
                raise InputError(self.fixed if name == "fixed" else self.moving, "pyramid is marked incomplete; finish its conversion first")
            _check_content(self.fixed if name == "fixed" else self.moving, layout, storage_options)
        self.plan = plan_registration(self.layouts["fixed"], self.layouts["moving"], load_schedule(schedule), parse_bytes(memory_budget), self.fixed, self.moving)
        if not self.plan.steps:
            raise InputError("schedule", "no step of the schedule can run on these pyramids")
        self.masks = (fixed_mask, moving_mask)
        self.normalize = normalize
        self.clip_percentiles = clip_percentiles
        self.inputs_key = _inputs_key(self.fixed, self.moving, self.layouts, self.plan, fixed_mask, moving_mask, normalize, clip_percentiles)
        with storage_errors(self.root):
            _prepare_directory(self.root, self.inputs_key, overwrite, storage_options)
        self._reader: _LevelReader | None = None

    @property
    def work(self) -> Path:
        """The local directory ANTs works in: ``out`` itself, or for a bucket a
        worker-local mirror of it (the same on every call on this host)."""
        if is_remote(self.root):
            return scratch_dir(self.root, self.inputs_key)
        return Path(self.root)

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """The JSON document at ``relative`` under ``out``, or None when there is none."""
        try:
            return json.loads(read_bytes(join(self.root, relative), self.storage_options))
        except FileNotFoundError:
            return None

    def read_bytes(self, relative: str) -> bytes | None:
        """A file of the directory (e.g. a step's qc.png), or None when it is missing."""
        try:
            return read_bytes(join(self.root, relative), self.storage_options)
        except FileNotFoundError:
            return None

    def manifest(self) -> dict[str, Any] | None:
        """The finished directory's manifest, or None while it is not finished."""
        return self.read_json(MANIFEST)

    def step_names(self) -> list[str]:
        return [planned.name for planned in self.plan.steps]

    def run_step(self, index: int) -> dict[str, Any]:
        """Run step ``index`` (or reuse it when it finished before for the same inputs
        and the same starting transforms); the earlier steps must be done."""
        chain = self._chain(index)
        planned = self.plan.steps[index]
        if self._reader is None:  # kept across the steps this process runs: a level is read once
            self._reader = _LevelReader(self.fixed, self.moving, self.layouts, self.normalize, self.clip_percentiles, self.storage_options)
        with storage_errors(self.root):
            saved = self.read_json(f"steps/{planned.name}/result.json")
            if saved and saved.get("inputs_key") == self.inputs_key and saved.get("chain_key") == chain["key"]:
                saved["result"]["reused"] = True
                return saved["result"]
            masks = _MaskReader(*self.masks, storage_options=self.storage_options)
            local = {k: self._local(chain[k]) for k in ("warps", "inverse")}
            with heap_for_mid_size_allocations():  # ANTs' images are mid-size: see scalereg.heap
                result, state = _run_step(
                    planned, self.work, self._reader, masks, local["warps"], local["inverse"], self._local(chain["affine"]), self.layouts
                )
            self._publish_step(planned.name, {"inputs_key": self.inputs_key, "chain_key": chain["key"], "result": result, "state": state})
        return result

    def _local(self, relative: Any) -> Any:
        """Local paths for files named relative to ``out`` (fetched to this host's cache when remote)."""
        if relative is None:
            return None
        if isinstance(relative, list):
            return [self._local(item) for item in relative]
        if is_remote(self.root):
            return local_copy(join(self.root, relative), self.storage_options)
        return os.path.join(self.root, relative)

    def _publish_step(self, name: str, record: dict[str, Any]) -> None:
        """Make a step's files visible under ``out``, its record (what makes it done) last."""
        workdir = self.work / "steps" / name
        if is_remote(self.root):
            files = sorted(p for p in workdir.rglob("*") if p.is_file())
            fs, path = filesystem(self.root, self.storage_options)
            fs.put([str(p) for p in files], [f"{path}/{p.relative_to(self.work).as_posix()}" for p in files])
        write_bytes(join(self.root, "steps", name, "result.json"), json.dumps(record, indent=2).encode(), self.storage_options)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # levels in memory stay in the process that read them
        return state

    def finish(self) -> dict[str, Any]:
        """Write the composed transforms, the OME-Zarr fields and the manifest (last)."""
        existing = self.manifest()
        if existing is not None:
            return existing
        chain = self._chain(len(self.plan.steps))
        assert chain["affine"] is not None  # the first step is never rejected
        fingerprints: dict[str, dict[str, str]] = {"fixed": {}, "moving": {}}
        for record in chain["records"]:
            for which in fingerprints:
                fingerprints[which].update(record["state"].get("fingerprints", {}).get(which, {}))
        results = [record["result"] for record in chain["records"]]
        with storage_errors(self.root):
            return _finish(self, results, self._local(chain["affine"]), self._local(chain["total_warp"]), fingerprints)

    def _chain(self, upto: int) -> dict[str, Any]:
        """What steps 0..upto-1 recorded: the transforms a later step starts from."""
        # paths relative to ``out``
        warps: list[str] = []  # apply order: newest (finest) first
        inverse: list[str] = []  # apply order: oldest first
        affine: str | None = None
        total_warp: list[str] | None = None
        records = []
        for planned in self.plan.steps[:upto]:
            record = self.read_json(f"steps/{planned.name}/result.json")
            if record is None or record.get("inputs_key") != self.inputs_key or record.get("chain_key") != [*warps, affine]:
                raise RuntimeError(f"step {planned.name} has not finished for these inputs; run the steps in order")
            state = record["state"]
            if record["result"]["accepted"]:
                affine = state["affine"]
                if state.get("warp"):
                    warps.insert(0, state["warp"])
                    inverse.append(state["inverse_warp"])
                    total_warp = [state["total_warp"], state["total_inverse_warp"]]
            records.append(record)
        return {"warps": warps, "inverse": inverse, "affine": affine, "total_warp": total_warp, "records": records, "key": [*warps, affine]}


# ------------------------------------------------------------------ one step


def _run_step(
    planned: PlannedStep,
    work: Path,
    reader: "_LevelReader",
    masks: "_MaskReader",
    chain_warps: list[str],
    chain_inverse: list[str],
    affine: str | None,
    layouts: dict[str, PyramidLayout],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one step in ``work``/steps/<name> from the chain so far (local files); returns
    its result and its state (the files it wrote, relative to ``work``)."""
    workdir = work / "steps" / planned.name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)

    step = planned.step
    fixed_image = reader.image("fixed", planned.fixed_level)
    if step.transform == "syn":
        fixed_image = crop_to_tissue(fixed_image)
    moving_image = reader.image("moving", planned.moving_level)
    fixed_array = from_ants_image(fixed_image)
    fixed_mask = masks.image("fixed", layouts["fixed"], planned.step.spacing, fixed_image)
    moving_mask = masks.image("moving", layouts["moving"], planned.step.spacing, moving_image)

    first = affine is None
    if first:
        affine = _centre_of_mass_alignment(fixed_image, moving_image, str(workdir / "initial.mat"), reader.names)
    chain_in = [*chain_warps, affine]
    before = None
    if first:  # coarse and cheap: the overlap check and the "before" picture share it
        before = from_ants_image(ants.apply_transforms(fixed_image, moving_image, chain_in))
        _check_overlap(fixed_array, before, reader.names)

    release_free_memory()  # the step's peak then starts from what is really in use
    with Measured() as measured:
        transforms = run_ants_step(step, fixed_image, moving_image, workdir, initial=chain_in, fixed_mask=fixed_mask, moving_mask=moving_mask)
    if before is None:  # computed after the step so that it does not add to the step's peak memory
        before = from_ants_image(ants.apply_transforms(fixed_image, moving_image, chain_in))
    metric_before = similarity(fixed_array, before)
    after = from_ants_image(ants.image_read(transforms.warped))
    metric_after = similarity(fixed_array, after)
    key = "ncc" if step.metric in ("cc", "meansquares") else "mi"
    worse = metric_after[key] < metric_before[key] - WORSE_TOLERANCE * max(abs(metric_before[key]), 1e-12)
    accepted = not worse or first
    result: dict[str, Any] = {
        "step": planned.name,
        "transform": step.transform,
        "metric": step.metric,
        "fixed_level": planned.fixed_level,
        "moving_level": planned.moving_level,
        "spacing_um": planned.fixed_spacing_um,
        "shape": list(planned.fixed_shape),
        "before": metric_before,
        "after": metric_after,
        "accepted": accepted,
        "seconds": round(measured.seconds, 2),
        "peak_rss": measured.peak_rss,
        "peak_rss_added": measured.added_rss,
        "estimated_bytes": planned.estimated_bytes,
        "ran_on": _where_this_runs(),
    }
    if not accepted:
        result["note"] = (
            f"{planned.name}: {key} got worse ({metric_before[key]:.4f} -> {metric_after[key]:.4f}); "
            "this step's transform was discarded and the previous one kept"
        )
    state: dict[str, Any] = {"affine": transforms.affine, "fingerprints": reader.fingerprints}
    if accepted and transforms.warp:
        warps = [transforms.warp, *chain_warps]
        inverses = [*chain_inverse, transforms.inverse_warp]
        total = ants.apply_transforms(fixed_image, fixed_image, warps, compose=str(workdir / "total_"))
        total_inverse = ants.apply_transforms(fixed_image, fixed_image, inverses, compose=str(workdir / "total_inverse_"))
        state.update(
            warp=transforms.warp,
            inverse_warp=transforms.inverse_warp,
            total_warp=total,
            total_inverse_warp=total_inverse,
        )
        result.update(jacobian_stats(total, fixed_image, foreground(fixed_array)))
    qc_picture(
        fixed_array,
        before,
        after,
        tuple(reversed(fixed_image.spacing)),  # type: ignore[arg-type]
        workdir / "qc.png",
        f"{planned.name}: {key} {metric_before[key]:.3f} -> {metric_after[key]:.3f}" + ("" if accepted else " (discarded)"),
    )
    result["picture"] = f"steps/{planned.name}/qc.png"  # relative to the transform directory
    os.remove(transforms.warped)
    (workdir / "qc.json").write_text(json.dumps(result, indent=2))
    for name in ("affine", "warp", "inverse_warp", "total_warp", "total_inverse_warp"):
        if state.get(name):  # relative, so that another host (or a moved directory) finds them
            state[name] = Path(os.path.relpath(state[name], work)).as_posix()
    return result, state


def crop_to_tissue(image: "ants.ANTsImage", margin: float = 0.1) -> "ants.ANTsImage":
    """``image`` cut to the bounding box of its tissue (voxels above the mean) plus
    ``margin`` of the box's size on each side: SyN's memory and time grow with the
    grid, and background far from tissue carries no information."""
    data = image.numpy()
    inside = np.argwhere(data > data.mean())
    if inside.size == 0:
        return image
    low, high = inside.min(axis=0), inside.max(axis=0) + 1
    pad = np.ceil((high - low) * margin).astype(int) + 2
    low = np.maximum(low - pad, 0)
    high = np.minimum(high + pad, data.shape)
    if np.all(low == 0) and np.all(high == data.shape):
        return image
    return ants.crop_indices(image, [int(v) for v in low], [int(v) for v in high])


def _centre_of_mass_alignment(fixed: "ants.ANTsImage", moving: "ants.ANTsImage", path: str, names: dict[str, str]) -> str:
    """A translation taking the fixed image's intensity centre onto the moving one's."""
    offset = _centre_lps(moving, names["moving"]) - _centre_lps(fixed, names["fixed"])
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=np.eye(3), offset=tuple(offset))
    ants.write_transform(transform, path)
    return path


def _centre_lps(image: "ants.ANTsImage", name: str) -> np.ndarray:
    data = np.clip(image.numpy(), 0, None).astype(np.float64)
    total = data.sum()
    if total <= 0:
        raise InputError(name, "is empty at this step's level (no positive intensities): nothing to register")
    index = np.array([(data.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / total for axis, n in enumerate(data.shape)])
    direction = np.asarray(image.direction)
    return np.asarray(image.origin) + direction @ (np.asarray(image.spacing) * index)


def _check_overlap(fixed: np.ndarray, moving_in_fixed: np.ndarray, names: dict[str, str]) -> None:
    fixed_fg = foreground(fixed)
    moving_fg = moving_in_fixed > moving_in_fixed.mean() if moving_in_fixed.any() else np.zeros_like(fixed_fg)
    smaller = min(fixed_fg.sum(), moving_fg.sum())
    overlap = (fixed_fg & moving_fg).sum() / smaller if smaller else 0.0
    if overlap < MIN_OVERLAP:
        raise InputError(
            f"{names['fixed']} / {names['moving']}",
            f"fixed and moving do not overlap after initialisation ({100 * overlap:.1f}% of the tissue); "
            "check their orientation codes and origins",
        )


# ------------------------------------------------------------------ inputs


class _LevelReader:
    """Pyramid levels as ANTs images, each read once, with a content fingerprint."""

    def __init__(self, fixed: str, moving: str, layouts: dict[str, PyramidLayout], normalize: bool, clip: tuple[float, float], storage_options: dict[str, Any] | None = None):
        self.names = {"fixed": fixed, "moving": moving}
        self.storage_options = storage_options
        self.layouts = layouts
        self.normalize = normalize
        self.clip = clip
        self.fingerprints: dict[str, dict[str, str]] = {"fixed": {}, "moving": {}}
        self._cache: dict[tuple[str, int], Any] = {}

    def image(self, which: str, level: int) -> "ants.ANTsImage":
        key = (which, level)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != which}  # keep one level per image
            layout = self.layouts[which]
            array = open_array(join(self.names[which], layout.levels[level].path), storage_options=self.storage_options)[:]
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise InputError(self.names[which], f"level {level} contains NaN/Inf voxels")
            self.fingerprints[which][layout.levels[level].path] = level_fingerprint(array)
            data = array.astype(np.float32)
            if self.normalize:
                low, high = np.percentile(data, self.clip)
                data = np.clip((data - low) / max(high - low, 1e-12), 0, 1).astype(np.float32)
            self._cache[key] = to_ants_image(data, layout.level_geometry(level), self.names[which])
        return self._cache[key]


class _MaskReader:
    def __init__(self, fixed: str | None, moving: str | None, storage_options: dict[str, Any] | None = None) -> None:
        self.uris = {"fixed": normalize_uri(fixed) if fixed else None, "moving": normalize_uri(moving) if moving else None}
        self.storage_options = storage_options
        self.layouts = {k: read_pyramid(v, storage_options) for k, v in self.uris.items() if v}

    def image(self, which: str, image_layout: PyramidLayout, spacing_um: float, reference: "ants.ANTsImage") -> "ants.ANTsImage | None":
        uri = self.uris[which]
        if uri is None:
            return None
        layout = self.layouts[which]
        level, _ = choose_level(layout, spacing_um, uri)
        array = (open_array(join(uri, layout.levels[level].path), storage_options=self.storage_options)[:] > 0).astype(np.float32)
        mask = to_ants_image(array, layout.level_geometry(level), uri)
        if tuple(mask.shape) != tuple(reference.shape):
            mask = ants.resample_image_to_target(mask, reference, interp_type="nearestNeighbor")
        if not mask.numpy().any():
            raise InputError(uri, "mask is empty on the registration grid")
        return mask


def _check_content(uri: str, layout: PyramidLayout, storage_options: dict[str, Any] | None) -> None:
    """Refuse, before any step, an image nothing can be registered to: its coarsest
    level (the smallest read) holds NaN/Inf or a single value (an empty volume)."""
    level = layout.levels[-1]
    with storage_errors(uri):
        array = open_array(join(uri, level.path), storage_options=storage_options)[:]
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(uri, f"level {level.path} contains NaN/Inf voxels")
    if array.size == 0 or array.min() == array.max():
        value = f"{array.flat[0]:g}" if array.size else "missing"
        raise InputError(uri, f"is empty: every voxel of its coarsest level ({level.path}) is {value}; nothing to register")


def _inputs_key(fixed: str, moving: str, layouts: dict[str, PyramidLayout], plan: RegistrationPlan, *options: Any) -> str:
    identity = {
        "fixed": [fixed, [(l.path, l.shape, l.scale, l.translation) for l in layouts["fixed"].levels], layouts["fixed"].geometry.orientation],
        "moving": [moving, [(l.path, l.shape, l.scale, l.translation) for l in layouts["moving"].levels], layouts["moving"].geometry.orientation],
        "schedule": plan.schedule.model_dump(),
        "budget": plan.memory_budget,
        "options": [str(o) for o in options],
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def registration_inputs(fixed: str, moving: str, schedule: Any = None, fixed_mask: str | None = None, moving_mask: str | None = None) -> list[tuple[str, Any]]:
    """What a registration reads, with roles (what its transform directory is kept apart from)."""
    schedule_file = schedule if isinstance(schedule, (str, os.PathLike)) and str(schedule) not in ("mouse", "human") else None
    return [("fixed input", fixed), ("moving input", moving), ("fixed mask", fixed_mask), ("moving mask", moving_mask), ("schedule", schedule_file)]


def _prepare_directory(root: str, inputs_key: str, overwrite: bool, storage_options: dict[str, Any] | None) -> None:
    """Resume a directory written for the same inputs; replace one scalereg wrote for
    other inputs only with ``overwrite``; refuse anything else (`existing_output`)."""
    if existing_output(root, "transform", storage_options) == "transform":
        fs, path = filesystem(root, storage_options)
        marker = f"{path}/inputs_key"
        ours = fs.exists(marker) and fs.cat_file(marker).decode().strip() == inputs_key
        if overwrite:
            fs.rm(path, recursive=True)
        elif not ours:
            raise InputError(root, "transform directory already exists for other inputs; pass --overwrite to replace it")
    write_bytes(join(root, "inputs_key"), inputs_key.encode(), storage_options)


# ------------------------------------------------------------------ outputs


def _finish(
    run: RegistrationRun,
    results: list[dict[str, Any]],
    affine: str,
    total_warp: list[str] | None,
    fingerprints: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """The composed transforms as files, the fields as OME-Zarr, then the manifest
    (last: its presence says the directory is complete); ``affine`` and
    ``total_warp`` are local files."""
    root, options, plan, layouts = run.root, run.storage_options, run.plan, run.layouts
    files = {"forward/affine.mat": affine}
    outputs: dict[str, Any] = {
        "affine": "forward/affine.mat",
        "forward": ["forward/affine.mat"],
        "inverse": ["forward/affine.mat"],
        "inverse_invert": [True],
    }
    field_levels: dict[str, list[dict[str, Any]]] = {}  # each field's level records, with checksums
    if total_warp:
        files.update({"forward/warp.nii.gz": total_warp[0], "inverse/inverse_warp.nii.gz": total_warp[1]})
        last = next(r for r in reversed(results) if r["accepted"] and r["transform"] == "syn")
        for name, path in (("field.ome.zarr", total_warp[0]), ("inverse_field.ome.zarr", total_warp[1])):
            image = ants.image_read(path)  # on the SyN step's grid, cropped to the tissue
            field = from_ants_image(image)  # (z, y, x, 3)
            field_levels[name] = [write_vector_field(
                join(root, name), np.moveaxis(field, -1, 0), ants_image_geometry(image, name), f"{name}: see manifest.json 'mapping'", storage_options=options
            )]  # fmt: skip
        outputs.update(
            warp="forward/warp.nii.gz",
            inverse_warp="inverse/inverse_warp.nii.gz",
            field="field.ome.zarr",
            inverse_field="inverse_field.ome.zarr",
            field_level=last["fixed_level"],
            forward=["forward/warp.nii.gz", "forward/affine.mat"],
            inverse=["forward/affine.mat", "inverse/inverse_warp.nii.gz"],
            inverse_invert=[True, False],
        )
    # What scalereg's warp reads (fields as chunked OME-Zarr, read region by region);
    # the lists above are the same mappings as ANTs files.
    affine_entry = {"kind": "affine", "path": "forward/affine.mat"}
    outputs["chains"] = {
        "forward": ([{"kind": "field", "path": "field.ome.zarr"}] if total_warp else []) + [affine_entry],
        "inverse": [{**affine_entry, "invert": True}] + ([{"kind": "field", "path": "inverse_field.ome.zarr"}] if total_warp else []),
    }
    manifest = {
        "scalereg_version": __version__,
        "kind": "scalereg-transform",
        "inputs_key": run.inputs_key,
        "fixed": _image_record(run.fixed, layouts["fixed"], fingerprints["fixed"]),
        "moving": _image_record(run.moving, layouts["moving"], fingerprints["moving"]),
        "space": {"physical": "LPS", "unit": "micrometer"},
        "mapping": "moving_point = affine(fixed_point + field(fixed_point)); "
        "ants.apply_transforms(fixed, moving, forward) resamples moving onto fixed",
        "schedule": plan.schedule.model_dump(),
        "plan": {
            "memory_budget": format_bytes(plan.memory_budget),
            "steps": plan.summary(),
            "stopped": plan.stopped,
            "skipped": list(plan.skipped),
            "notes": list(plan.notes),
        },
        "steps": results,
        "outputs": outputs,
        "libraries": {
            "antspyx": getattr(ants, "__version__", "unknown"),
            "numpy": np.__version__,
            "zarr": zarr.__version__,
            "python": platform.python_version(),
        },
        "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
        "total_seconds": round(sum(r["seconds"] for r in results), 2),
    }
    fs, path = filesystem(root, options)
    for relative, local in files.items():
        if is_remote(root):
            fs.put_file(local, f"{path}/{relative}")
        else:
            os.makedirs(os.path.join(root, os.path.dirname(relative)), exist_ok=True)
            shutil.copyfile(local, os.path.join(root, relative))
    manifest["checksums"] = _checksums(root, options, files, results, field_levels)
    write_bytes(join(root, MANIFEST), json.dumps(manifest, indent=2).encode(), options)  # last write: the directory is complete
    return manifest


def _checksums(
    root: str, options: dict[str, Any] | None, files: dict[str, str], results: list[dict[str, Any]], field_levels: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """What `scalereg validate` verifies (see `scalereg.transforms.transform_checksums`):
    the SHA-256 of every file the manifest lists, from the local copies just uploaded
    (the QC pictures from ``root``), and the fields' level checksums."""
    checksums = {relative: file_checksum(local) for relative, local in files.items()}
    for result in results:
        picture = result.get("picture")
        if picture and exists(join(root, picture), options):
            checksums[picture] = file_checksum(join(root, picture), options)
    return {"algorithm": dict(CHECKSUM_ALGORITHMS), "files": dict(sorted(checksums.items())), "fields": field_levels}


def _image_record(uri: str, layout: PyramidLayout, fingerprints: dict[str, str]) -> dict[str, Any]:
    """What identifies an input: its path, content fingerprints of the levels read, and
    where its level 0 is in LPS space (so that a warp can check it has the right pair)."""
    geometry = layout.geometry
    return {
        "uri": redact_uri(uri),
        "orientation": geometry.orientation,
        "unit": geometry.unit,
        "shape": list(layout.levels[0].shape),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "lps_bounds_um": [list(b) for b in lps_bounds_um(geometry, layout.levels[0].shape)],
        "fingerprints": fingerprints,
    }


def _where_this_runs() -> dict[str, Any]:
    """Host, process and batch job (SLURM) of this step: provenance for the step record."""
    job = os.environ.get("SLURM_JOB_ID")
    return {"host": socket.gethostname(), "pid": os.getpid(), **({"slurm_job": job} if job else {})}
