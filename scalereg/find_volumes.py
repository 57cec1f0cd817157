"""The volumes directly under a local directory or an s3:// prefix (what a sweep registers)."""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from scalereg.errors import InputError
from scalereg.storage import filesystem, is_remote, normalize_uri

# One file per volume, or one directory (prefix) per Zarr/OME-Zarr volume; longest first
# so that brain.ome.zarr is named "brain", not "brain.ome".
FILE_SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif", ".nrrd", ".nhdr", ".mha", ".mhd")
DIRECTORY_SUFFIXES = (".ome.zarr", ".zarr")


@dataclass(frozen=True)
class FoundVolume:
    name: str  # the file name without its volume suffix: names the volume's output directory
    uri: str


def find_volumes(location: str, min_age_seconds: float = 0) -> list[FoundVolume]:
    """Volumes directly under ``location``, by name.  Local files modified less than
    ``min_age_seconds`` ago are left for a later sweep (they may still be being
    copied in; an S3 object appears only once complete).  Two volumes with the same
    name (brain.tif and brain.nii.gz) are an InputError: they would share an output."""
    root = normalize_uri(location)
    try:
        fs, path = filesystem(root)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        raise InputError(location, "no such directory or prefix") from None
    except NotADirectoryError:
        raise InputError(location, "is a file; give the directory or prefix the volumes are in") from None
    found: dict[str, FoundVolume] = {}
    now = time.time()
    for entry in sorted(entries, key=lambda e: e["name"]):
        base = posixpath.basename(entry["name"].rstrip("/"))
        suffixes = DIRECTORY_SUFFIXES if entry["type"] == "directory" else FILE_SUFFIXES
        suffix = next((s for s in suffixes if base.lower().endswith(s)), None)
        if suffix is None or base.startswith("."):
            continue
        if not is_remote(root) and now - float(entry.get("mtime") or now) < min_age_seconds:
            continue
        name = base[: -len(suffix)]
        uri = f"{root.split('://')[0]}://{entry['name'].rstrip('/')}" if is_remote(root) else entry["name"].rstrip("/")
        if name in found:
            raise InputError(location, f"two volumes are named {name!r} ({posixpath.basename(found[name].uri)}, {base}): rename one")
        found[name] = FoundVolume(name, uri)
    return list(found.values())
