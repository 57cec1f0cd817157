"""Checksums of a transform directory's files, recorded in its manifest and verified.

`scalereg.register.register_pyramids` writes ``manifest.json`` last; it carries, under
``checksums``, the SHA-256 of every file the manifest lists (the ANTs transforms of
``outputs``, each step's QC picture) and the level checksums of the OME-Zarr
displacement fields (`scalereg.omezarr.level_checksums`: over decoded values, so a
change of codec is not a change).  `validate_transform_directory` (``scalereg validate
DIR``) recomputes them and names every file that is missing or changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scalereg.omezarr.level_checksums import ALGORITHM as LEVEL_ALGORITHM
from scalereg.omezarr.level_checksums import known_algorithm, level_data_problem
from scalereg.storage import exists, filesystem, join, open_array

MANIFEST = "manifest.json"
FILE_ALGORITHM = "sha256 of the file's bytes"
ALGORITHMS = {"files": FILE_ALGORITHM, "fields": LEVEL_ALGORITHM}
READ_BYTES = 8 * 2**20


def file_checksum(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """``sha256:<hex>`` of the file (or object) at ``uri``, read in pieces."""
    fs, path = filesystem(uri, storage_options)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while piece := handle.read(READ_BYTES):
            digest.update(piece)
    return "sha256:" + digest.hexdigest()


def has_transform_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``uri`` holds a transform directory's ``manifest.json``."""
    try:
        return exists(join(uri, MANIFEST), storage_options)
    except (OSError, ValueError):
        return False


def validate_transform_directory(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Problems found in the transform directory at ``uri`` (empty when every file its
    manifest lists is there, unchanged)."""
    fs, root = filesystem(uri, storage_options)
    try:
        manifest = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST}"))
    except FileNotFoundError:
        return [f"no {MANIFEST}: not a finished transform directory"]
    except ValueError as error:
        return [f"{MANIFEST} is unreadable ({error})"]
    if not isinstance(manifest, dict) or manifest.get("kind") != "scalereg-transform":
        return [f"{MANIFEST} is not a scalereg transform manifest"]
    recorded = manifest.get("checksums")
    if not recorded:
        return [f"{MANIFEST} records no checksums (written by scalereg {manifest.get('scalereg_version', '?')}): nothing to verify"]
    if not isinstance(recorded, dict):
        return [f"{MANIFEST}: 'checksums' is not an object"]
    files = recorded.get("files") if isinstance(recorded.get("files"), dict) else {}
    fields = recorded.get("fields") if isinstance(recorded.get("fields"), dict) else {}
    problems = [p for relative in sorted(files) for p in [file_problem(uri, relative, files[relative], storage_options)] if p]
    algorithm = (recorded.get("algorithm") or {}).get("fields") if isinstance(recorded.get("algorithm"), dict) else None
    if fields and not known_algorithm(algorithm):
        return problems + [f"the manifest's field checksums use an algorithm this scalereg does not know ({algorithm!r}): not checked"]
    for name in sorted(fields):
        problems += field_problems(uri, name, fields[name], algorithm, storage_options)
    return problems


def file_problem(uri: str, relative: str, checksum: Any, storage_options: dict[str, Any] | None = None) -> str | None:
    """What is wrong with the file ``relative`` of the directory ``uri`` against its
    recorded ``checksum``, in words; None when it matches."""
    if not _inside(relative):
        return f"{relative!r}: not a path inside the directory (the manifest may only name its own files)"
    try:
        found = file_checksum(join(uri, relative), storage_options)
    except (FileNotFoundError, IsADirectoryError):
        return f"{relative}: missing (listed in the manifest)"
    if found != checksum:
        return f"{relative}: contents differ from the checksum in the manifest (changed or corrupted since it was written)"
    return None


def field_problems(uri: str, name: str, levels: Any, algorithm: str | None, storage_options: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with the OME-Zarr field ``name`` of the directory ``uri`` against
    its recorded ``levels`` (each {path, shape, checksum}), in words."""
    if not _inside(name) or not isinstance(levels, list):
        return [f"{name!r}: not a field of the directory recorded as the manifest records fields"]
    problems = []
    for level in levels:
        if not isinstance(level, dict) or not _inside(str(level.get("path", ""))) or "shape" not in level or "checksum" not in level:
            problems.append(f"{name}: a level record of the manifest is malformed ({str(level)[:80]})")
            continue
        where = f"{name} level {level['path']}"
        try:
            array = open_array(join(uri, name, level["path"]), storage_options=storage_options)
        except Exception as error:  # noqa: BLE001 - zarr says "not found" with its own classes
            problems.append(f"{where}: missing or unreadable ({type(error).__name__}; listed in the manifest)")
            continue
        problem = level_data_problem(array, level, algorithm)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _inside(relative: str) -> bool:
    """Whether ``relative`` names something inside a directory (no '..', not absolute)."""
    parts = relative.replace("\\", "/").split("/")
    return bool(relative) and not relative.startswith("/") and "://" not in relative and all(part not in ("", ".", "..") for part in parts)
