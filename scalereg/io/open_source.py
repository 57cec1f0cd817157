"""Pick the reader for a volume from its name and, for directories and buckets, its content."""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec

from scalereg.errors import InputError
from scalereg.io.source import Source
from scalereg.storage import filesystem, is_remote, normalize_uri
from scalereg.storage_errors import StoreUnavailable, storage_errors, storage_problem

SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz)",
    "TIFF stack (.tif, .tiff)",
    "directory or glob pattern of 2D TIFF slices",
    "NRRD (.nrrd, .nhdr)",
    "MetaImage (.mha, .mhd)",
    "OME-Zarr image",
    "Zarr array",
)


def open_source(uri: str, storage_options: dict[str, Any] | None = None) -> Source:
    """The `Source` for ``uri``: a local file, directory or glob pattern, or a Zarr URL.

    Files are recognised by extension; directories and remote URLs by their Zarr
    metadata (OME ``multiscales`` -> OmeZarrSource, an array -> ZarrArraySource)
    or, for a local directory, by holding TIFF slices.  In a bucket (s3://, ...) a
    Zarr is read in place and a single-file volume (NIfTI, TIFF, NRRD/MHA) through a
    local copy on each host that reads it; ``storage_options`` go to fsspec.
    """
    if is_remote(str(uri)):
        return _open_remote(str(uri), storage_options)
    # absolute, so that a reader pickled to a worker with another cwd still finds it
    uri = normalize_uri(uri)
    # imported here so that importing scalereg.io does not load every format library
    from scalereg.io.itk_source import ITK_SUFFIXES, ItkSource
    from scalereg.io.nifti_source import NiftiSource
    from scalereg.io.tiff_source import TIFF_SUFFIXES, TiffSource

    if any(c in uri for c in "*?[") and not os.path.exists(uri):
        return TiffSource(uri)
    if not os.path.exists(uri):
        raise InputError(uri, "no such file or directory")
    name = uri.rstrip("/\\").lower()
    if os.path.isdir(uri):
        kind = _zarr_kind(fsspec.filesystem("file"), uri)
        if kind is not None:
            return _open_zarr(uri, kind, None)
        if any(entry.lower().endswith(TIFF_SUFFIXES) for entry in os.listdir(uri)):
            return TiffSource(uri)
        raise _unknown_format(uri, "directory holds neither Zarr metadata nor .tif/.tiff files")
    if name.endswith((".nii", ".nii.gz")):
        return NiftiSource(uri)
    if name.endswith(TIFF_SUFFIXES):
        return TiffSource(uri)
    if name.endswith(ITK_SUFFIXES):
        return ItkSource(uri)
    raise _unknown_format(uri, "unrecognised file extension")


def _open_remote(uri: str, storage_options: dict[str, Any] | None) -> Source:
    try:
        fs, path = filesystem(uri, storage_options)
    except InputError:
        raise
    except (ImportError, ValueError) as error:
        raise InputError(uri, f"cannot open this URL: {error}") from None
    with storage_errors(uri):
        if fs.isfile(path):
            return _open_object(uri, storage_options)
        if not fs.exists(path):
            raise InputError(uri, "no such object or prefix")
        kind = _zarr_kind(fs, path)
    if kind is None:
        raise _unknown_format(uri, "no Zarr metadata under this prefix")
    return _open_zarr(uri, kind, storage_options)


def _open_object(uri: str, storage_options: dict[str, Any] | None) -> Source:
    from scalereg.io.itk_source import ITK_SUFFIXES, ItkSource
    from scalereg.io.nifti_source import NiftiSource
    from scalereg.io.staged_source import StagedSource
    from scalereg.io.tiff_source import TIFF_SUFFIXES, TiffSource

    name = uri.lower()
    for suffixes, reader in (((".nii", ".nii.gz"), NiftiSource), (TIFF_SUFFIXES, TiffSource), (ITK_SUFFIXES, ItkSource)):
        if name.endswith(suffixes):
            return StagedSource(uri, reader, storage_options)
    raise _unknown_format(uri, "unrecognised file extension")


def _open_zarr(uri: str, kind: str, storage_options: dict[str, Any] | None) -> Source:
    if kind == "ome":
        from scalereg.io.ome_zarr_source import OmeZarrSource

        return OmeZarrSource(uri, storage_options=storage_options)
    if kind == "array":
        from scalereg.io.zarr_source import ZarrArraySource

        return ZarrArraySource(uri, storage_options=storage_options)
    raise InputError(
        uri,
        "Zarr group without OME 'multiscales' metadata: give the path of an array inside it, "
        "or an OME-Zarr image",
    )


def _zarr_kind(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """'ome', 'array' or 'group' from the Zarr metadata at ``path``; None if there is none."""
    path = path.rstrip("/")
    v3 = _read_json(fs, f"{path}/zarr.json")
    if v3 is not None:
        if v3.get("node_type") == "array":
            return "array"
        attributes = v3.get("attributes") if isinstance(v3.get("attributes"), dict) else {}
        ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else {}
        if not isinstance(v3.get("attributes", {}), dict):
            raise InputError(path, "Zarr metadata whose attributes are not an object")
        return "ome" if "multiscales" in ome or "multiscales" in attributes else "group"
    if fs.exists(f"{path}/.zarray"):
        return "array"
    attributes = _read_json(fs, f"{path}/.zattrs") or {}
    if "multiscales" in attributes:
        return "ome"
    if fs.exists(f"{path}/.zgroup"):
        return "group"
    return None


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    """The JSON document at ``path``, or None where there is no file.  A store that fails
    to answer raises its own error (`storage_errors` names it), not "no metadata":
    fsspec's ``isfile`` says False for any failure, a store's 503 included."""
    try:
        # asked first: under a file, some filesystems raise other errors than FileNotFoundError
        info = fs.info(path)
        if info.get("type") != "file":
            return None
        with fs.open(path, "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        if not local and storage_problem(error) is not None:
            raise  # the store's answer, translated by the caller's storage_errors
        raise InputError(path, f"unreadable Zarr metadata: {error}") from None
    size = info.get("size")
    if size is not None and len(raw) != size:
        raise StoreUnavailable(path, f"the store delivered {len(raw)} of the metadata's {size} bytes; try again later")
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise InputError(path, f"unreadable Zarr metadata: {error}") from None
    return document if isinstance(document, dict) else None


def _unknown_format(uri: str, reason: str) -> InputError:
    return InputError(uri, f"{reason}; supported formats: {', '.join(SUPPORTED_FORMATS)}")
