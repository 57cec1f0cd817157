"""Object-store failures as one-line user errors that name the URI (and never a secret).

botocore and s3fs report the same few problems in many shapes (``PermissionError``
wrapping a ``ClientError``, ``FileNotFoundError`` for a bucket or a key,
``EndpointConnectionError`` after retries, zarr's own not-found errors).  Wrap the
parts of a stage that touch a store in `storage_errors(uri)`: what the user can fix
becomes a `StorageError` (an InputError: failed once, shown as one line, never
retried by tasks), except an unreachable or throttling store, a `StoreUnavailable`
that tasks retry first; anything else passes through unchanged.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from scalereg.errors import InputError, TransientError
from scalereg.storage import filesystem, is_remote, redact_uri

F = TypeVar("F", bound=Callable[..., Any])

# botocore error codes -> what the user should be told
_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key is not known to this store (wrong credentials, or the wrong endpoint_url)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (wrong credentials)",
    "AccessDenied": "access denied: the credentials in use have no permission for this",
    "AllAccessDisabled": "access denied: the credentials in use have no permission for this",
    "InvalidToken": "the session token is invalid or expired",
    "ExpiredToken": "the session token is invalid or expired",
    "NoSuchKey": "no such object",
    "SlowDown": "the store kept throttling requests (SlowDown) after every retry; use fewer workers or try again later",
    "503": "the store kept throttling requests (SlowDown) after every retry; use fewer workers or try again later",
}


MISSING = "no such object or prefix"
FORBIDDEN = "access forbidden (403): the credentials are wrong or have no permission for this"


class StorageError(InputError):
    """An object store refused or could not be reached; the message names the URI."""


class StoreUnavailable(StorageError, TransientError):
    """The store could not be reached, or kept throttling: tasks retry it (a store that
    was down for a few seconds mid-run costs a retry, not the run)."""


UNREACHABLE = "cannot reach the store's endpoint"


@contextmanager
def storage_errors(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Translate object-store failures raised inside the block for the remote ``uri``."""
    if not is_remote(str(uri)):
        yield
        return
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - classified below, re-raised if unknown
        problem = storage_problem(error)
        if problem is None:
            raise
        subject = redact_uri(uri)
        if problem == FORBIDDEN:
            problem = _listing_problem(uri, storage_options) or problem
        if problem == MISSING:
            # zarr and HEAD requests say "not found" for a missing bucket too: ask the bucket
            if not bucket_exists(uri, storage_options):
                problem = _CODES["NoSuchBucket"]
            elif isinstance(error, FileNotFoundError) and error.args and "/" in str(error.args[0]):
                subject = f"{uri.split('://', 1)[0]}://{str(error.args[0]).lstrip('/')}"  # the very object
        transient = problem.startswith(UNREACHABLE) or problem == _CODES["SlowDown"]
        raise (StoreUnavailable if transient else StorageError)(subject, problem) from None


def _listing_problem(uri: str, storage_options: dict[str, Any] | None) -> str | None:
    """Ask again with a listing: a HEAD request's 403 has no body, a list request's names the cause."""
    try:
        fs, path = filesystem(uri, storage_options)
        fs.ls(path, detail=False, refresh=True)
    except Exception as error:  # noqa: BLE001 - only its classification matters
        found = storage_problem(error)
        return found if found not in (FORBIDDEN, MISSING) else None
    return None


def bucket_exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """False only when the store says the bucket of ``uri`` does not exist."""
    scheme, _, rest = str(uri).partition("://")
    try:
        fs, _ = filesystem(uri, storage_options)
        fs.ls(rest.split("/", 1)[0], detail=False)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - any other answer means it is there (or cannot tell)
        return True
    return True


def translating(uri_of: Callable[..., str]) -> Callable[[F], F]:
    """Decorator form: ``uri_of(*args, **kwargs)`` names the URI the call works on."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with storage_errors(uri_of(*args, **kwargs)):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def storage_problem(error: BaseException) -> str | None:
    """What went wrong with a store, in words, or None when ``error`` is not a store failure."""
    chain = _causes(error)
    for item in chain:
        code = _error_code(item)
        if code in _CODES:
            return _CODES[code]
    for item in chain:
        name = type(item).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return f"{UNREACHABLE} ({_endpoint(item)}); check endpoint_url / AWS_ENDPOINT_URL and the network"
        if name == "NoCredentialsError":
            return "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, use an instance role, or anon for a public bucket)"
    for item in chain:
        text = str(item)
        if "bucket does not exist" in text:
            return _CODES["NoSuchBucket"]
        if isinstance(item, PermissionError):
            # a HEAD request's 403 carries no code: credentials or permission, either may be wrong
            return FORBIDDEN
        if isinstance(item, FileNotFoundError) or type(item).__name__ in ("GroupNotFoundError", "ArrayNotFoundError", "NodeNotFoundError"):
            return MISSING
    return None


def _causes(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    item: BaseException | None = error
    while item is not None and item not in seen:
        seen.append(item)
        item = item.__cause__ or item.__context__
    return seen


def _error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        return str(code) if code is not None else None
    return None


def _endpoint(error: BaseException) -> str:
    # botocore puts the whole request URL here; keep scheme, host and port only
    url = str(getattr(error, "kwargs", {}).get("endpoint_url", "")) or "?"
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else url
