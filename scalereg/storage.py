"""Local paths and object-store URIs behind one small interface.

Zarr stores are opened from a URI (a local path or ``s3://bucket/key``) plus fsspec
``storage_options``; completion markers are tiny objects written with fsspec after
the data they vouch for.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
import zarr



def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def normalize_uri(uri: str | os.PathLike) -> str:
    """Absolute local path, or the URI unchanged for object stores."""
    text = os.fspath(uri)
    if is_remote(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def open_group(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None, **kwargs: Any) -> zarr.Group:
    if is_remote(uri):
        return zarr.open_group(uri, mode=mode, storage_options=storage_options or {}, **kwargs)
    return zarr.open_group(uri, mode=mode, **kwargs)


def open_array(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None) -> zarr.Array:
    if is_remote(uri):
        return zarr.open_array(uri, mode=mode, storage_options=storage_options or {})
    return zarr.open_array(uri, mode=mode)


def write_marker(uri: str, text: str = "", storage_options: dict[str, Any] | None = None) -> None:
    """Write a small marker object (after the data it vouches for)."""
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0]
    if not is_remote(uri):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)  # atomic on POSIX: never a half-written marker
    else:
        with fs.open(path, "w") as handle:
            handle.write(text)


def remove_tree(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def redact_uri(uri: str) -> str:
    """The URI without any user:password part (credentials never go into metadata)."""
    text = str(uri)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        host, sep, path = rest.partition("/")
        if "@" in host:
            host = host.rsplit("@", 1)[1]
        return f"{scheme}://{host}{sep}{path}"
    return text
