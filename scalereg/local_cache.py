"""Local copies of remote files, for the libraries that read only local paths.

ANTs reads and writes transforms (``.mat``, ``.nii.gz``) only as files, and NIfTI/TIFF
readers want a seekable local file.  `local_copy` fetches an object once per process
host into a cache keyed by its URI and its version (ETag, else size and mtime), so a
worker reuses what it fetched and never reads a stale copy after the object changed.
Copies are made on the worker that needs them, never shipped through the flow.

The copies are bounded: every use marks its copy as used, and after each fetch the
least recently used copies are removed until the cache holds at most
``$SCALEREG_CACHE_MAX`` (default 50GiB) -- but never a copy used within
``$SCALEREG_CACHE_KEEP_SECONDS`` (default an hour: another task on the host may be
reading it), nor the one just fetched.  A removed copy is fetched again when needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from scalereg.errors import InputError
from scalereg.storage import filesystem, is_remote, normalize_uri
from scalereg.storage_errors import storage_errors
from scalereg.units import parse_bytes

CACHE_ENV = "SCALEREG_CACHE_DIR"
MAX_ENV = "SCALEREG_CACHE_MAX"
KEEP_ENV = "SCALEREG_CACHE_KEEP_SECONDS"
DEFAULT_MAX = "50GiB"
DEFAULT_KEEP_SECONDS = 3600.0


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
        if target.exists():
            _mark_used(target.parent)
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.part-{os.getpid()}")
        fs.get_file(path, str(partial))
        os.replace(partial, target)  # concurrent fetches of one object end with one whole file
        _mark_used(target.parent)
    prune_cache(keep=target.parent)
    return str(target)


def _mark_used(entry: Path) -> None:
    try:
        os.utime(entry)
    except FileNotFoundError:  # removed meanwhile by another process's pruning: fetched again next time
        pass


def cache_limits() -> tuple[int, float]:
    """(bytes the copies may hold, seconds a used copy is kept whatever the size), from
    the environment."""
    size = parse_bytes(os.environ.get(MAX_ENV) or DEFAULT_MAX, MAX_ENV)
    text = os.environ.get(KEEP_ENV) or str(DEFAULT_KEEP_SECONDS)
    try:
        keep = float(text)
    except ValueError:
        raise InputError(KEEP_ENV, f"{text!r} is not a number of seconds") from None
    if not keep >= 0:
        raise InputError(KEEP_ENV, f"{text!r} must be zero or more seconds")
    return size, keep


def prune_cache(keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the least recently used copies until the cache holds at most the limit
    (`cache_limits`), sparing ``keep`` and copies used within the keep time; returns
    the copies removed.  Safe with other processes pruning or fetching at once."""
    limit, keep_seconds = cache_limits()
    now = time.time() if now is None else now
    entries = []
    for entry in (cache_root() / "objects").glob("*"):
        try:
            used = entry.stat().st_mtime
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        entries.append((used, size, entry))
    total = sum(size for _, size, _ in entries)
    removed = []
    for used, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry == keep or now - used < keep_seconds:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def scratch_dir(*key: str) -> Path:
    """A local working directory for one unit of work, stable for the same ``key``."""
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:20]
    path = cache_root() / "work" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path
