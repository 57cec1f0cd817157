"""Local copies of remote files, for the libraries that read only local paths.

ANTs reads and writes transforms (``.mat``, ``.nii.gz``) only as files, and NIfTI/TIFF
readers want a seekable local file.  `local_copy` fetches an object once per process
host into a cache keyed by its URI and its version (ETag, else size and mtime), so a
worker reuses what it fetched and never reads a stale copy after the object changed.
Copies are made on the worker that needs them, never shipped through the flow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from scalereg.storage import filesystem, is_remote, normalize_uri
from scalereg.storage_errors import storage_errors

CACHE_ENV = "SCALEREG_CACHE_DIR"


def cache_root() -> Path:
    """``$SCALEREG_CACHE_DIR``, else a directory under the machine's temp dir."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "scalereg-cache")


def local_copy(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local path holding the content of ``uri`` (the path itself when it is local)."""
    if not is_remote(str(uri)):
        return normalize_uri(uri)
    with storage_errors(uri):
        fs, path = filesystem(uri, storage_options)
        info = fs.info(path)
        version = info.get("ETag") or info.get("etag") or f"{info.get('size')}:{info.get('LastModified') or info.get('mtime')}"
        key = hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:20]
        target = cache_root() / "objects" / key / os.path.basename(path.rstrip("/"))
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.part-{os.getpid()}")
            fs.get_file(path, str(partial))
            os.replace(partial, target)  # concurrent fetches of one object end with one whole file
    return str(target)


def scratch_dir(*key: str) -> Path:
    """A local working directory for one unit of work, stable for the same ``key``."""
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:20]
    path = cache_root() / "work" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path
