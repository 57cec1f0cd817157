"""A list of transforms applied to LPS points one after the other, as ANTs does.

``TransformChain([T1, ..., Tn])`` maps a point p of the output (reference) space to
``Tn(...T2(T1(p)))`` in the source space: the same list and the same meaning as
``ants.apply_transforms(fixed, moving, transformlist=[T1, ..., Tn])``, which resamples
``moving`` onto ``fixed`` by sampling it at those points.

`load_transform_chain` reads either a scalereg transform directory (its manifest
says which files make the forward and the inverse mapping) or ANTs transform files:
affine ``.mat`` (``[file.mat,1]`` or ``!file.mat`` to invert, as antsApplyTransforms
writes it) and displacement fields (``.nii.gz``, or OME-Zarr fields).  NIfTI fields
are converted once to chunked OME-Zarr (`prepare`) so that each tile reads only the
part of the field it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from scalereg.errors import InputError
from scalereg.geometry import UNITS_IN_MICROMETERS
from scalereg.local_cache import local_copy
from scalereg.storage import exists, is_remote, join, normalize_uri, read_bytes, write_marker
from scalereg.storage_errors import storage_errors
from scalereg.omezarr.level_checksums import known_algorithm
from scalereg.transforms.affine_transform import AffineTransform, read_ants_affine
from scalereg.transforms.transform_checksums import field_problems, file_problem
from scalereg.transforms.displacement_field import (
    NIFTI_SUFFIXES,
    DisplacementField,
    convert_nifti_field,
    nifti_field_grid,
    read_vector_field,
)

MANIFEST = "manifest.json"
Component = Union[AffineTransform, DisplacementField]


@dataclass
class TransformChain:
    components: list[Component]
    # what the chain was made from, for provenance and fingerprints
    description: list[dict[str, Any]]
    manifest: dict[str, Any] | None = None
    # NIfTI fields still to be converted: (NIfTI path, OME-Zarr uri)
    pending: list[tuple[str, str]] = dataclass_field(default_factory=list)

    def prepare(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Load what mapping points in the LPS box [low, high] needs (the parts of the
        fields); return a box that holds all their images."""
        for component in self.components:
            if isinstance(component, AffineTransform):
                low, high = component.map_box(low, high)
            else:
                low, high = component.prepare(low, high)
        return low, high

    def map(self, points: np.ndarray, outside_field: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) LPS points of the output space -> their positions in the source space.

        ``outside_field`` (bool, N), if given, is set for points that fell off a
        displacement field's grid (they moved by the affine parts only)."""
        for component in self.components:
            if isinstance(component, DisplacementField):
                points = component.map(points, outside_field)
            else:
                points = component.map(points)
        return points

    def linear_part(self) -> AffineTransform:
        """The chain with every field dropped (for estimates: scale, overlap)."""
        total = AffineTransform(np.eye(3), np.zeros(3))
        for component in self.components:
            if isinstance(component, AffineTransform):
                total = total.then(component)
        return total

    def fields(self) -> list[DisplacementField]:
        return [c for c in self.components if isinstance(c, DisplacementField)]

    def convert_fields(self, storage_options: dict[str, Any] | None = None) -> None:
        """Convert the NIfTI fields to OME-Zarr (once: a marker records each finished one)."""
        for path, uri in self.pending:
            done = join(uri, ".converted")
            if not exists(done, storage_options):
                convert_nifti_field(path, uri, storage_options)
                write_marker(done, storage_options=storage_options)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_transform_chain(
    transforms: str | Sequence[str],
    inverse: bool = False,
    field_cache: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> TransformChain:
    """The chain of ``transforms``: one scalereg transform directory, or ANTs files in
    ``ants.apply_transforms`` order.  ``inverse`` selects a directory's inverse mapping
    (fixed -> moving images, moving -> fixed points).  ``field_cache`` is where NIfTI
    fields are converted to (required when there are any)."""
    items = [transforms] if isinstance(transforms, (str, os.PathLike)) else list(transforms)
    if not items:
        raise InputError("transform", "no transform given")
    if is_transform_directory(items, storage_options):
        with storage_errors(str(items[0])):
            return _from_directory(normalize_uri(str(items[0])), inverse, storage_options)
    if inverse:
        raise InputError("--inverse", "applies to a scalereg transform directory; for ANTs files list the inverse transforms themselves")
    components: list[Component] = []
    description: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []
    for position, item in enumerate(items):
        path, invert = _parse_item(str(item))
        lowered = path.lower().rstrip("/")
        if is_remote(path) and lowered.endswith((".mat", *NIFTI_SUFFIXES)):
            # ANTs files are read from a local copy (this host's cache, keyed by the object's ETag)
            with storage_errors(path):
                remote, path = path, local_copy(path, storage_options)
            description.append({"object": remote})
        if lowered.endswith(".mat"):
            components.append(read_ants_affine(path, invert))
            description.append({"affine": os.path.abspath(path), "invert": invert, "sha256": _file_hash(path)})
        elif lowered.endswith(NIFTI_SUFFIXES):
            if invert:
                raise InputError(path, "a displacement field cannot be inverted here; give its inverse field (e.g. the 1InverseWarp.nii.gz ANTs wrote)")
            if not os.path.exists(path):
                raise InputError(path, "transform file not found")
            if field_cache is None:
                raise InputError(path, "a NIfTI displacement field needs a place to be converted to (field_cache)")
            stat = os.stat(path)
            key = hashlib.sha256(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
            uri = join(field_cache, f"field-{position}-{key}.ome.zarr")
            components.append(DisplacementField(uri=uri, grid=nifti_field_grid(path), storage_options=storage_options))
            pending.append((path, uri))
            description.append({"field": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        elif lowered.endswith(".zarr"):
            if invert:
                raise InputError(path, "a displacement field cannot be inverted here; give its inverse field")
            component = read_vector_field(normalize_uri(path), storage_options)
            components.append(component)
            description.append(component.fingerprint())
        else:
            raise InputError(path, "unknown transform type: expected an ANTs affine (.mat), a displacement field (.nii.gz, OME-Zarr) or a scalereg transform directory")
    return TransformChain(components, description, None, pending)


def is_transform_directory(transforms: str | Sequence[str], storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``transforms`` names one scalereg transform directory (not ANTs files)."""
    items = [transforms] if isinstance(transforms, (str, os.PathLike)) else list(transforms)
    if len(items) != 1 or str(items[0]).rstrip("/").endswith(".zarr"):
        return False
    item = str(items[0])
    if is_remote(item):  # a prefix, not a file: a directory if it holds a manifest (finished or not, it is refused below)
        if item.lower().rstrip("/").endswith((".mat", *NIFTI_SUFFIXES)):
            return False
        with storage_errors(item):
            return exists(join(item, MANIFEST), storage_options) or exists(join(item, "inputs_key"), storage_options)
    return os.path.isdir(item)


def _from_directory(directory: str, inverse: bool, storage_options: dict[str, Any] | None) -> TransformChain:
    """The forward or inverse chain of a transform directory, every file of it checked
    against the manifest's checksums first (a file changed since the registration is
    refused, naming it)."""
    manifest_path = join(directory, MANIFEST)
    try:
        manifest = json.loads(read_bytes(manifest_path, storage_options))
    except FileNotFoundError:
        raise InputError(directory, "not a complete transform directory (no manifest.json: the registration did not finish)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(manifest_path, f"unreadable manifest ({error})") from None
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    chains = outputs.get("chains") if isinstance(outputs, dict) else None
    if not isinstance(manifest, dict) or manifest.get("kind") != "scalereg-transform" or not isinstance(chains, dict):
        raise InputError(directory, "manifest.json is not a scalereg transform manifest (no 'outputs.chains')")
    for role in ("fixed", "moving"):
        _check_image_record(manifest.get(role), role, manifest_path)
    direction = "inverse" if inverse else "forward"
    entries = chains.get(direction)
    if not isinstance(entries, list):
        raise InputError(manifest_path, f"outputs.chains.{direction} is not a list of transforms")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("kind") not in ("affine", "field") or not isinstance(entry.get("path"), str):
            raise InputError(manifest_path, f"outputs.chains.{direction}[{position}] is not a transform ({{'kind': 'affine' or 'field', 'path': ...}}): {str(entry)[:120]}")
    _verify_checksums(directory, manifest, entries, storage_options)
    components: list[Component] = []
    for entry in entries:
        path = join(directory, entry["path"])
        if entry["kind"] == "affine":
            components.append(read_ants_affine(local_copy(path, storage_options), bool(entry.get("invert", False))))
        else:
            if not exists(join(path, "zarr.json"), storage_options) and not exists(join(path, ".zattrs"), storage_options):
                raise InputError(path, "displacement field listed in the manifest is missing")
            components.append(read_vector_field(path, storage_options))
    description = [{"directory": directory, "inputs_key": manifest.get("inputs_key"), "inverse": inverse}]
    return TransformChain(components, description, manifest)


def _check_image_record(record: Any, role: str, manifest_path: str) -> None:
    """Refuse a manifest whose record of the ``role`` image (what a warp checks its
    images against) is not one: uri, level fingerprints, LPS bounds, spacing, unit."""
    def refuse(what: str) -> InputError:
        return InputError(manifest_path, f"'{role}' {what}: not a record scalereg wrote")

    if record is None:
        return
    if not isinstance(record, dict):
        raise refuse("is not an object")
    if not isinstance(record.get("uri", ""), str):
        raise refuse("has a uri that is not a string")
    fingerprints = record.get("fingerprints") or {}
    if not isinstance(fingerprints, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in fingerprints.items()):
        raise refuse("has fingerprints that are not {level: digest}")
    bounds = record.get("lps_bounds_um")
    if bounds is not None and not _numbers(bounds, (2, 3)):
        raise refuse("has lps_bounds_um that are not two points of three finite numbers")
    spacing = record.get("spacing")
    if spacing is not None and not _numbers(spacing, (3,)):
        raise refuse("has a spacing that is not three finite numbers")
    if record.get("unit", "micrometer") not in UNITS_IN_MICROMETERS:
        raise refuse(f"has an unknown unit {str(record.get('unit'))[:40]!r}")


def _numbers(value: Any, shape: tuple[int, ...]) -> bool:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return False
    return array.shape == shape and bool(np.all(np.isfinite(array)))


def _verify_checksums(directory: str, manifest: dict[str, Any], entries: list[dict[str, Any]], storage_options: dict[str, Any] | None) -> None:
    """Refuse a chain whose files differ from the checksums the manifest recorded (a
    manifest of a scalereg that recorded none is taken as it is)."""
    recorded = manifest.get("checksums")
    if not recorded:
        return
    if not isinstance(recorded, dict):
        raise InputError(join(directory, MANIFEST), "'checksums' is not an object")
    files = recorded.get("files") if isinstance(recorded.get("files"), dict) else {}
    fields = recorded.get("fields") if isinstance(recorded.get("fields"), dict) else {}
    algorithm = (recorded.get("algorithm") or {}).get("fields") if isinstance(recorded.get("algorithm"), dict) else None
    for entry in entries:
        relative = entry["path"]
        if entry["kind"] == "affine":
            if relative not in files:
                raise InputError(join(directory, relative), "has no checksum in the manifest (it lists every file it uses): not used")
            problem = file_problem(directory, relative, files[relative], storage_options)
            problems = [problem] if problem else []
        else:
            if relative not in fields:
                raise InputError(join(directory, relative), "has no checksum in the manifest (it lists every field it uses): not used")
            if not known_algorithm(algorithm):
                raise InputError(join(directory, MANIFEST), f"field checksums use an algorithm this scalereg does not know ({algorithm!r})")
            problems = field_problems(directory, relative, fields[relative], algorithm, storage_options)
        if problems:
            raise InputError(directory, f"{problems[0]}; the transform directory cannot be trusted (scalereg validate lists every problem)")


def _parse_item(item: str) -> tuple[str, bool]:
    """``path``, ``[path,1]`` (antsApplyTransforms' way to invert) or ``!path``."""
    text = item.strip()
    if text.startswith("[") and text.endswith("]"):
        path, _, flag = text[1:-1].rpartition(",")
        if not path or flag.strip() not in ("0", "1"):
            raise InputError(item, "expected [file,0] or [file,1]")
        return path.strip(), flag.strip() == "1"
    if text.startswith("!"):
        return text[1:], True
    return text, False


def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise InputError(path, "transform file not found") from None
