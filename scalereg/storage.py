"""Local paths and object-store URIs behind one small interface.

Zarr stores are opened from a URI (a local path or ``s3://bucket/key``) plus fsspec
``storage_options``; completion markers are tiny objects written with fsspec after
the data they vouch for.  Every opening goes through `resolve_options`, the one
place that turns a URI and the user's (non-secret) settings into fsspec options.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
import zarr

from scalereg.errors import InputError
from scalereg.redact import check_bucket_name, refuse_url_credentials

# Settings a caller may give for S3 (everything else comes from the environment).
S3_SETTINGS = ("endpoint_url", "region", "anon", "profile")
# Never accepted as a parameter of a flow or the CLI: parameters are recorded by
# Prefect and shipped to workers; credentials come from each process's boto3 chain.
SECRET_OPTIONS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
# Bounded so that an unreachable endpoint fails in seconds, not minutes; "standard"
# retries throttling (SlowDown, 503) with backoff before s3fs's own retries.
# (s3fs retries SlowDown again, up to 5 times, around botocore's attempts.)
S3_CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 4, "mode": "standard"}}

def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def normalize_uri(uri: str | os.PathLike) -> str:
    """Absolute local path, or the URI unchanged for object stores (refused when it
    carries credentials or names no valid bucket)."""
    text = refuse_url_credentials(os.fspath(uri))
    if is_remote(text):
        check_bucket_name(text)
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def resolve_options(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options to open ``uri`` with.

    For ``s3://``: ``endpoint_url``, ``region``, ``anon`` (public buckets, unsigned
    requests) and ``profile`` from ``storage_options``, else from the environment
    (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
    ``SCALEREG_S3_ANON=1``; ``AWS_PROFILE`` is read by botocore itself), with bounded
    timeouts and retries.  Credentials are not looked up here: without ``key`` and
    ``secret`` botocore's chain (environment, profile, instance role) finds them in
    the process that opens the store, so they never travel with a task.  Other
    fsspec options given are passed through unchanged.
    """
    options = dict(storage_options or {})
    refuse_url_credentials(str(uri))  # every opening of a store comes through here
    if not str(uri).startswith(("s3://", "s3a://")):
        return options
    check_bucket_name(str(uri))
    env = os.environ
    endpoint = options.pop("endpoint_url", None) or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = options.pop("region", None) or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    anon = options.pop("anon", None)
    if anon is None:
        anon = env.get("SCALEREG_S3_ANON", "").lower() in ("1", "true", "yes")
    if endpoint:
        options["endpoint_url"] = endpoint
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    if region:
        client_kwargs.setdefault("region_name", region)
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    options["anon"] = bool(anon)
    options["config_kwargs"] = {**S3_CLIENT_CONFIG, **(options.get("config_kwargs") or {})}
    return options


def check_settings(settings: dict[str, Any] | None, subject: str = "storage_options") -> dict[str, Any]:
    """``settings`` given as a flow or CLI parameter: only non-secret S3 settings."""
    settings = dict(settings or {})
    secret = sorted(k for k in settings if k.lower() in SECRET_OPTIONS)
    if secret:
        raise InputError(
            subject,
            f"credentials ({', '.join(secret)}) are not accepted as parameters: give them through the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE), an instance role or a Prefect AwsCredentials block",
        )
    unknown = sorted(set(settings) - set(S3_SETTINGS))
    if unknown:
        raise InputError(subject, f"unknown settings {unknown}; known: {', '.join(S3_SETTINGS)}")
    return settings


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **resolve_options(uri, storage_options))
    return fs, path


def output_uri(uri: str | os.PathLike) -> str:
    """``uri`` normalised, refusing a bucket's root (scalereg writes under a prefix only,
    so a mistyped output can never scatter objects over a whole bucket) and a local
    place that cannot be written (`check_writable`)."""
    text = normalize_uri(uri)
    if is_remote(text):
        _, _, rest = text.partition("://")
        if "/" not in rest.strip("/"):
            raise InputError(text, "is the root of a bucket; give a prefix to write under, e.g. s3://bucket/run1")
    else:
        check_writable(text)
    return text


# A filesystem with less free space than this is full: nothing scalereg writes fits.
MIN_FREE_BYTES = 16 * 2**20


def check_writable(path: str, subject: str | None = None) -> None:
    """Refuse a local output ``path`` that cannot be written, before anything is: its
    nearest existing folder is a file, read-only (filesystem or permissions) or on a
    full filesystem."""
    name, at = (subject, f"{path}: ") if subject else (path, "")
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    target = existing if os.path.isdir(existing) else os.path.dirname(existing)
    if existing != os.path.abspath(path) and not os.path.isdir(existing):
        raise InputError(name, f"{at}cannot be created: {existing} is a file, not a folder")
    try:
        info = os.statvfs(target)
    except OSError as error:
        raise InputError(name, f"{at}cannot be written: {error.strerror}") from None
    if info.f_flag & os.ST_RDONLY:
        raise InputError(name, f"{at}cannot be written: {target} is on a read-only filesystem")
    if not os.access(target, os.W_OK | os.X_OK):
        raise InputError(name, f"{at}cannot be written: no permission to write in {target}")
    free = info.f_bavail * info.f_frsize
    if free < MIN_FREE_BYTES:
        raise InputError(name, f"{at}cannot be written: the filesystem of {target} is full ({free // 1024} KiB free)")



def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a whole object/file at once: a reader sees the old content or the new, never a part."""
    fs, path = filesystem(uri, storage_options)
    if is_remote(uri):
        fs.pipe_file(path, data)  # one PUT: atomic on S3
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def open_group(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None, **kwargs: Any) -> zarr.Group:
    if is_remote(uri):
        return zarr.open_group(uri, mode=mode, storage_options=resolve_options(uri, storage_options), **kwargs)
    return zarr.open_group(uri, mode=mode, **kwargs)


def open_array(uri: str, mode: str = "r", storage_options: dict[str, Any] | None = None) -> zarr.Array:
    if is_remote(uri):
        return zarr.open_array(uri, mode=mode, storage_options=resolve_options(uri, storage_options))
    return zarr.open_array(uri, mode=mode)


def write_marker(uri: str, text: str = "", storage_options: dict[str, Any] | None = None) -> None:
    """Write a small marker object (after the data it vouches for)."""
    write_bytes(uri, text.encode(), storage_options)


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
