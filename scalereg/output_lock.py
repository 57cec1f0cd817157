"""One run writes an output at a time: `OutputLock`, a lock beside the output that
names its owner and carries a heartbeat.

Every top-level run takes the lock of each output it writes before writing anything
(the flows do it where they start, see flows/outputs.py, and so does ``scalereg
register``); a second run aimed at the same output is refused with an `InputError`
that names the run holding it.  The lock of ``brain.ome.zarr`` is the file (or S3
object) ``brain.ome.zarr.lock`` beside it: outside the output, so that nothing that
reads, validates, resumes or replaces the output ever sees it, and it can never make
an output look complete.

The lock is a small JSON record of its owner: host, pid (with that process's start
time and PID namespace), user, the run (e.g. a Prefect flow run's name and id), when
it started, and a heartbeat that a background thread refreshes ten times per stale
timeout.  A lock is stale, and is taken over with a warning, when

- its owner ran on this host (in this PID namespace) and that process is gone, or
- its heartbeat is older than the stale timeout: ``stale_after`` seconds, by default
  ``SCALEREG_LOCK_STALE_SECONDS`` or 600 (hosts' clocks must agree well within it).

Taking a lock is atomic where the store allows it.  A local lock file appears whole,
as a hard link to its written record that fails if the lock exists (atomic on local
filesystems and NFS; O_CREAT|O_EXCL where there are no hard links); a stale one is
replaced in one rename, under a takeover mutex (another such file), after checking
that it is still the very lock judged stale.  An S3 object is created with a
conditional PUT (``If-None-Match: *``), and a stale one, or one's own heartbeat, is
replaced with ``If-Match`` on the ETag that was read, so that of two runs taking over
the same stale lock only one wins.  AWS S3, MinIO and moto honour these headers; on a
store that ignores them what remains is a check, a write and a read-back, and two
runs started within the same instant could both proceed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from scalereg.errors import InputError, input_error_from_os
from scalereg.storage import filesystem, is_remote, normalize_uri, redact_uri
from scalereg.storage_errors import storage_errors

LOCK_SUFFIX = ".lock"
STALE_ENVIRONMENT_VARIABLE = "SCALEREG_LOCK_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 600.0
# Heartbeats per stale timeout: a lock goes stale only after many missed beats.
BEATS_PER_TIMEOUT = 10
# Rounds of (create, judge the lock found, take it over) before giving up on a lock
# that keeps changing hands.
ATTEMPTS = 5
# A takeover of a stale local lock waits this long for another run's takeover to end;
# a takeover mutex older than this was left by a run that died taking over.
TAKEOVER_SECONDS = 10.0

_log = logging.getLogger(__name__)


class OutputLock:
    """The lock of ``output`` (a local path or s3:// URI), held between `acquire` and
    `release`, or for a ``with`` block.

    ``run`` names the run in the owner record and in the refusal other runs get
    (e.g. a flow run's name and id); ``stale_after`` is the stale timeout in seconds
    (default: ``SCALEREG_LOCK_STALE_SECONDS`` or 600); ``warn`` receives the warnings
    (a stale lock taken over, a heartbeat that could not be written; default: this
    module's logger).  `acquire` raises an `InputError` naming the owner when another
    live run holds the lock.
    """

    def __init__(
        self,
        output: str | os.PathLike,
        run: str | None = None,
        stale_after: float | None = None,
        storage_options: dict[str, Any] | None = None,
        warn: Callable[[str], Any] | None = None,
    ) -> None:
        self.output = normalize_uri(output).rstrip("/")
        self.uri = self.output + LOCK_SUFFIX
        self.run = run
        self.stale_after = _stale_after(stale_after)
        self.lost: str | None = None  # set when another run took this lock over
        self._warn = warn or _log.warning
        self._store = _ObjectLock(self.uri, storage_options) if is_remote(self.uri) else _FileLock(self.uri)
        self._record: dict[str, Any] | None = None
        self._version: Any = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def owner(self) -> dict[str, Any] | None:
        """The record this lock wrote while it is held (host, pid, user, run, started, heartbeat)."""
        return None if self._record is None else dict(self._record)

    def acquire(self) -> "OutputLock":
        """Take the lock (a stale one is taken over with a warning), or raise an
        `InputError` naming the run that holds it; starts the heartbeat."""
        if self._record is not None:
            raise RuntimeError(f"{self.uri} is already held by this OutputLock")
        try:
            with storage_errors(self.output):  # the user named the output, not its lock
                record, version = self._take()
        except OSError as error:  # a local directory this run may not write in, a full or read-only disk
            if input_error_from_os(error) is None:
                raise
            raise InputError(self.output, f"cannot create its lock {self.uri}: {error.strerror or error}") from None
        self._record, self._version = record, version
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat, name=f"heartbeat {self.uri}", daemon=True)
        self._beating.start()
        return self

    def _take(self) -> tuple[dict[str, Any], Any]:
        """(record, version) of the lock just taken, or an InputError naming its owner."""
        record = self._new_record()
        for _ in range(ATTEMPTS):
            version = self._store.create(_encode(record))
            if version is not None:
                break
            found = self._store.read()
            if found is None:
                continue  # released meanwhile: try again
            data, held_version, modified = found
            held = _decode(data)
            reason = self._stale_reason(held, modified)
            if reason is None:
                raise InputError(self.output, self._refusal(held, modified))
            version = self._store.replace(held_version, _encode(record))
            if version is not None:
                self._warn(f"{self.output}: took over the stale lock {self.uri} of {_owner(held)} ({reason})")
                break
        else:
            raise InputError(self.output, f"its lock {self.uri} keeps changing hands: are other runs starting on it? Try again")
        return record, version

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this run's; never
        raises (a lock that cannot be removed is reported and goes stale)."""
        if self._record is None:
            return
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        try:
            if not self._store.remove(self._version) and self.lost is None:
                self._warn(f"{self.output}: its lock {self.uri} was no longer this run's; left in place")
        except Exception as error:  # noqa: BLE001 - the run's result matters more than its lock
            self._warn(f"{self.output}: could not remove its lock {self.uri} ({error}); remove it, or it goes stale in {self.stale_after:.0f} s")
        finally:
            self._record = self._version = self._beating = None

    def _beat(self) -> None:
        """Refresh the heartbeat until released; stop if another run took the lock over."""
        while not self._stop.wait(self.stale_after / BEATS_PER_TIMEOUT):
            record = {**self._record, "heartbeat": _now()}
            try:
                version = self._store.refresh(self._version, _encode(record))
            except Exception as error:  # noqa: BLE001 - a store away for a moment: beat again later
                self._warn(f"{self.output}: could not refresh the heartbeat of its lock {self.uri} ({error}); trying again")
                continue
            if version is None:
                self.lost = f"the lock {self.uri} was taken over by another run (this run's heartbeat was late)"
                self._warn(f"{self.output}: {self.lost}")
                return
            self._record, self._version = record, version

    def _new_record(self) -> dict[str, Any]:
        now = _now()
        pid = os.getpid()
        return {
            "output": redact_uri(self.output),
            "run": self.run,
            "host": socket.gethostname(),
            "pid": pid,
            "process_started": _process_identity(pid)[1],
            "pid_namespace": _pid_namespace(),
            "user": _user(),
            "started": now,
            "heartbeat": now,
            "heartbeat_every": self.stale_after / BEATS_PER_TIMEOUT,
            "token": uuid.uuid4().hex,
        }

    def _timeout(self, held: dict[str, Any]) -> float:
        """This lock's stale timeout, never shorter than three of the owner's heartbeats."""
        try:
            beats = float(held.get("heartbeat_every") or 0)
        except (TypeError, ValueError):
            beats = 0.0
        return max(self.stale_after, 3 * beats)

    def _stale_reason(self, held: dict[str, Any], modified: float) -> str | None:
        """Why the lock ``held`` is stale, or None if its owner may still be writing."""
        pid = held.get("pid")
        if held.get("host") == socket.gethostname() and held.get("pid_namespace") == _pid_namespace() and isinstance(pid, int):
            state, started = _process_identity(pid)
            if state is None or state == "Z" or (started and held.get("process_started") not in (None, started)):
                return f"its process {pid} on this host is gone"
        age = time.time() - _heartbeat(held, modified)
        timeout = self._timeout(held)
        if age > timeout:
            return f"no heartbeat for {age:.0f} s, the timeout is {timeout:.0f} s"
        return None

    def _refusal(self, held: dict[str, Any], modified: float) -> str:
        age = max(0.0, time.time() - _heartbeat(held, modified))
        host, pid = held.get("host", "an unknown host"), held.get("pid", "?")
        return (
            f"is being written by {_owner(held)} since {held.get('started', 'an unknown time')} "
            f"(last heartbeat {age:.0f} s ago); if that run is dead, wait for its lock to go stale "
            f"({self._timeout(held):.0f} s without a heartbeat, or for a run started on {host}, as soon as pid {pid} "
            f"has ended; {STALE_ENVIRONMENT_VARIABLE} sets the timeout) or remove {self.uri}"
        )


class _FileLock:
    """A lock file on a local (or NFS) filesystem; versions are the file's bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.created_directories: list[str] = []  # deepest first: removed again with the lock when empty

    def create(self, data: bytes) -> bytes | None:
        """Create the lock with its record whole: a hard link of a written file (fails
        if the lock exists, atomic also on NFS), else O_CREAT|O_EXCL then the record."""
        self._make_parent()
        temporary = f"{self.path}.{uuid.uuid4().hex}"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, self.path)
            return data
        except FileExistsError:
            return None
        except OSError:  # a filesystem without hard links
            pass
        finally:
            os.unlink(temporary)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return data

    def read(self) -> tuple[bytes, bytes, float] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return data, data, modified

    def replace(self, version: bytes, data: bytes) -> bytes | None:
        """Take over the lock ``version``: under a takeover mutex (so that of runs taking
        over the same stale lock one wins), check that the lock is still the one judged
        stale and replace it in one rename (there is never a moment without a lock)."""
        mutex = f"{self.path}.takeover"
        deadline = time.monotonic() + TAKEOVER_SECONDS
        while True:
            try:
                os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(mutex).st_mtime > TAKEOVER_SECONDS:
                        os.unlink(mutex)  # left by a run that died while taking over
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)
        try:
            found = self.read()
            if found is None or found[0] != version:
                return None  # another run took it over first, or its owner let it go
            return self._write(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mutex)

    def refresh(self, version: bytes, data: bytes) -> bytes | None:
        """Rewrite the lock if it is still ``version``."""
        found = self.read()
        if found is None or found[0] != version:
            return None
        return self._write(data)

    def _write(self, data: bytes) -> bytes:
        """Replace the lock's record at once: readers see the old record or the new."""
        temporary = f"{self.path}.{uuid.uuid4().hex}"
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, self.path)
        return data

    def remove(self, version: bytes) -> bool:
        found = self.read()
        if found is None or found[0] != version:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for directory in self.created_directories:  # a run refused early leaves no empty output folder
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        return True

    def _make_parent(self) -> None:
        """Create the lock's directory, remembering which directories were new."""
        missing, directory = [], os.path.abspath(os.path.dirname(self.path) or ".")
        while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
            missing.append(directory)
            directory = os.path.dirname(directory)
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory)
                self.created_directories.insert(0, directory)


class _ObjectLock:
    """A lock object in S3; versions are ETags, changes are conditional requests."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.fs, path = filesystem(uri, storage_options)
        self.bucket, _, self.key = path.partition("/")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def create(self, data: bytes) -> str | None:
        if self.read() is not None:  # a store that ignores If-None-Match must not overwrite a held lock
            return None
        try:
            self._call("put_object", Body=data, IfNoneMatch="*")
        except OSError as error:
            if _condition_failed(error):
                return None
            raise
        found = self.read()  # read back: on a store that ignores the condition, the last writer wins
        return found[1] if found is not None and found[0] == data else None

    def read(self) -> tuple[bytes, str, float] | None:
        from fsspec.asyn import sync

        try:
            response = self._call("get_object")
        except FileNotFoundError:
            return None
        body = response["Body"]
        try:
            data = sync(self.fs.loop, body.read)
        finally:
            body.close()
        return data, response["ETag"], response["LastModified"].timestamp()

    def replace(self, version: str, data: bytes) -> str | None:
        try:
            return self._call("put_object", Body=data, IfMatch=version)["ETag"]
        except FileNotFoundError:
            return None
        except OSError as error:
            if _condition_failed(error):
                return None
            raise

    refresh = replace

    def remove(self, version: str) -> bool:
        try:
            self._call("delete_object", IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as error:
            if _condition_failed(error):
                return False
            found = self.read()  # a store without conditional deletes: check, then delete
            if found is None or found[1] != version:
                return False
            self._call("delete_object")
        return True


def _condition_failed(error: BaseException) -> bool:
    """Whether an S3 error says a conditional request's condition did not hold."""
    if isinstance(error, FileExistsError):
        return True
    response = getattr(error.__cause__, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _stale_after(value: float | None) -> float:
    subject = "stale_after"
    if value is None:
        text = os.environ.get(STALE_ENVIRONMENT_VARIABLE)
        if not text:
            return DEFAULT_STALE_SECONDS
        subject = STALE_ENVIRONMENT_VARIABLE
        try:
            value = float(text)
        except ValueError:
            raise InputError(subject, f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(subject, f"{value!r} is not a positive number of seconds")
    return float(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _heartbeat(held: dict[str, Any], modified: float) -> float:
    """When the owner last showed it was alive (the lock's modification time for a
    record that cannot be read, e.g. one being written)."""
    try:
        return datetime.fromisoformat(held["heartbeat"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return modified


def _owner(held: dict[str, Any]) -> str:
    who = f"run {held['run']}" if held.get("run") else "a run"
    return f"{who} on host {held.get('host', '?')} (pid {held.get('pid', '?')}, user {held.get('user', '?')})"


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1) + "\n").encode()


def _decode(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _process_identity(pid: int) -> tuple[str | None, str | None]:
    """(state, start time) of process ``pid``: state None if there is no such process;
    from /proc where there is one (start time None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]  # fields 3 and 22 of proc(5): state, starttime
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, None
    except PermissionError:
        pass  # another user's process
    except OSError:
        return None, None
    return "?", None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (a container)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"
