"""The one rule every output follows, whichever command, flow or function writes it.

- An output is never an input, never contains one and never lies inside one: writing
  it would change the input, and replacing it (``--overwrite``) would delete it.  Local
  paths are compared as given and with symlinks resolved (each way against each way),
  URIs as normalised text; a glob is compared through the files it matches, an ANTs
  inversion (``[file.mat,1]``, ``!file.mat``) through its file.
- Something already at an output is replaced (``overwrite``) only when scalereg wrote
  it and it holds nothing else: a pyramid (scalereg's status block in its metadata, and
  only Zarr metadata, levels and scalereg's own progress and scratch folders), a
  transform directory (its ``inputs_key`` or manifest, and only the entries a
  registration writes), or a CSV of mapped points (its ``outside_field`` column).
  Anything else is refused, with or without ``overwrite``; an empty directory counts as
  nothing.

`check_apart` is the first rule, `existing_output` the second's look at what is there;
the planners (conversion, warp, registration), the flows' entry points, the CLI's
``transform-points`` and the sweep all call them.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
from typing import Any, Iterable, Literal, Sequence

from scalereg.errors import InputError
from scalereg.storage import filesystem, is_remote, normalize_uri

OutputKind = Literal["pyramid", "transform", "points"]

# What each kind of output holds when scalereg wrote it (entries directly under it).
ZARR_METADATA = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})
PYRAMID_EXTRA = frozenset({".scalereg-progress", ".scalereg-scratch"})
TRANSFORM_ENTRIES = frozenset(
    {"manifest.json", "inputs_key", "forward", "inverse", "field.ome.zarr", "inverse_field.ome.zarr", "steps", ".scalereg-scratch"}
)
POINTS_COLUMN = "outside_field"
_LEVEL_NAME = re.compile(r"^\d+$")
_KIND_NAMES = {"pyramid": "pyramid", "transform": "transform directory", "points": "CSV of mapped points"}


def input_paths(given: str | os.PathLike | None) -> list[str]:
    """The paths an input as a user gives it stands for: itself, the file of an ANTs
    inversion (``[file.mat,1]``, ``!file.mat``), or the files a local glob matches."""
    if given is None:
        return []
    text = os.fspath(given).strip()
    if not text:
        return []
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].rpartition(",")[0].strip() or text
    elif text.startswith("!"):
        text = text[1:]
    if not is_remote(text) and any(c in text for c in "*?[") and not os.path.exists(text):
        return sorted(glob.glob(os.path.expanduser(text))) or [text]
    return [text]


def check_apart(output: str, inputs: Iterable[tuple[str, str | os.PathLike | Sequence[str] | None]], subject: str | None = None) -> None:
    """Refuse ``output`` when it is, contains or lies inside one of ``inputs`` ((role,
    input) pairs: ``("moving input", uri)``; an input may be a list, or None), naming
    the output (or ``subject``) and the input."""
    name, at = (subject, f"{output}: ") if subject else (output, "")
    for role, given in inputs:
        for item in [given] if isinstance(given, (str, os.PathLike)) or given is None else list(given):
            for path in input_paths(item):
                relation = _relation(output, path)
                if relation == "same":
                    raise InputError(name, f"{at}output is the {role} itself; choose another output path")
                if relation == "contains":
                    raise InputError(name, f"{at}output would contain the {role} {path} (writing or replacing it could change or delete it); choose another output path")
                if relation == "inside":
                    raise InputError(name, f"{at}output lies inside the {role} {path}; choose another output path")


def _relation(output: str, given: str) -> str | None:
    """How ``output`` stands to the input ``given``: "same", "contains", "inside" or None."""
    if is_remote(output) != is_remote(given):
        return None
    for a in _forms(output):
        for b in _forms(given):
            if a == b:
                return "same"
            if b.startswith(a.rstrip("/") + "/"):
                return "contains"
            if a.startswith(b.rstrip("/") + "/"):
                return "inside"
    return None


def _forms(uri: str) -> set[str]:
    """``uri`` as given (normalised) and, for a local path, with symlinks resolved."""
    if is_remote(uri):
        scheme, _, rest = normalize_uri(uri).partition("://")
        return {f"{scheme.lower()}://{posixpath.normpath('/' + rest).lstrip('/')}"}
    path = normalize_uri(uri)
    return {os.path.normpath(path), os.path.realpath(path)}


Existing = Literal["nothing", "pyramid", "transform", "points"]


def existing_output(uri: str, kind: OutputKind, storage_options: dict[str, Any] | None = None, subject: str | None = None) -> Existing:
    """What is at the output ``uri`` that a writer of ``kind`` may replace: "nothing"
    (no such path, or an empty directory) or ``kind`` itself (scalereg wrote it and it
    holds nothing else).  Anything else is refused: an InputError naming the output
    and what is in the way, whatever ``overwrite`` a caller was given."""
    name, at = (subject, f"{uri}: ") if subject else (uri, "")
    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        return "nothing"
    if fs.isfile(path):
        if kind == "points" and _is_points_csv(fs, path):
            return "points"
        what = "a file" if kind != "points" else "a file scalereg did not write (no outside_field column)"
        raise InputError(name, f"{at}output already exists and is {what}; scalereg replaces only what it wrote: choose another output path or remove it first")
    entries = {posixpath.basename(str(entry).rstrip("/")) for entry in fs.ls(path, detail=False)}
    entries.discard("")
    if not entries:
        return "nothing"
    if kind == "pyramid" and _is_scalereg_group(fs, path):
        foreign = {e for e in entries if e not in ZARR_METADATA | PYRAMID_EXTRA and not _LEVEL_NAME.match(e)}
    elif kind == "transform" and ("inputs_key" in entries or _is_transform_manifest(fs, path)):
        foreign = entries - TRANSFORM_ENTRIES
    else:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise InputError(
            name,
            f"{at}output already exists and holds files scalereg did not write ({shown}); scalereg replaces only a {_KIND_NAMES[kind]} "
            "it wrote (--overwrite): choose another output path or remove it first",
        )
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(
            name,
            f"{at}output already exists: a {_KIND_NAMES[kind]} scalereg wrote, but it also holds files scalereg did not write ({shown}); "
            "move them out or choose another output path",
        )
    return kind


def _is_scalereg_group(fs: Any, path: str) -> bool:
    for name in ("zarr.json", ".zattrs"):
        document = _json(fs, f"{path}/{name}")
        if isinstance(document, dict):
            attributes = document.get("attributes", document) if name == "zarr.json" else document
            if isinstance(attributes, dict) and isinstance(attributes.get("scalereg"), dict):
                return True
    return False


def _is_transform_manifest(fs: Any, path: str) -> bool:
    document = _json(fs, f"{path}/manifest.json")
    return isinstance(document, dict) and document.get("kind") == "scalereg-transform"


def _is_points_csv(fs: Any, path: str) -> bool:
    try:
        with fs.open(path, "rb") as handle:
            header = handle.readline(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return False
    return POINTS_COLUMN in [cell.strip().strip('"') for cell in header.split(",")]


def _json(fs: Any, path: str) -> Any:
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read(1 << 24))
    except (OSError, ValueError):
        return None
