"""How tasks fail: bad input once and cleanly, transient faults with retries."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from prefect.states import Failed

from scalereg.errors import BAD_INPUT_STATE, InputError, TransientError, input_error_from_os

F = TypeVar("F", bound=Callable[..., Any])

BAD_INPUT = BAD_INPUT_STATE

# Retried: I/O hiccups and lost connections.  Everything else (bugs, bad input) is not.
TRANSIENT = (OSError, TimeoutError, ConnectionError)


def fail_on_input_error(fn: F) -> F:
    """Turn an InputError into a Failed state carrying its one-line message.

    A returned Failed state is final: Prefect neither retries it nor logs a
    traceback, which is what a user error deserves.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TransientError:
            raise  # retried (see retry_transient); reported like bad input if it persists
        except InputError as error:
            return Failed(name=BAD_INPUT, message=str(error))
        except OSError as error:
            user = input_error_from_os(error)  # a full disk, a read-only filesystem: no retry helps
            if user is None:
                raise
            return Failed(name=BAD_INPUT, message=str(user))

    return wrapper  # type: ignore[return-value]


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry only exceptions that may succeed on a second try."""
    try:
        state.result()
    except TransientError:
        return True
    except InputError:
        return False
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


def bad_input_message(state: Any) -> str | None:
    """The message of a task that failed on bad input (or on a transient problem that
    outlasted its retries, such as a store that stayed unreachable), else None."""
    if state is None or not state.is_failed():
        return None
    if state.name == BAD_INPUT:
        return state.message or "bad input"
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a result that cannot be read is not a user error
        return None
    if isinstance(error, TransientError):
        return f"{error} (still failing after the task's retries)"
    return None
