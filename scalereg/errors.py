"""Errors that scalereg raises on purpose.

`InputError` is a user error: bad input, bad parameter, an output that already
exists.  The CLI prints it as one line and exits with code 2; flows fail with its
message; tasks never retry it.  Anything else is a bug or a transient fault.
"""

from __future__ import annotations

# Name of the Failed state that tasks and flows end in when their input was bad;
# the CLI maps it to exit code 2.
BAD_INPUT_STATE = "BadInput"


class InputError(ValueError):
    """Bad input from the user; the message names the input and the problem."""

    def __init__(self, subject: str, problem: str) -> None:
        self.subject = str(subject)
        self.problem = problem
        super().__init__(f"{self.subject}: {problem}")

    def __reduce__(self):  # picklable (tasks' failures travel between processes)
        return type(self), (self.subject, self.problem)


class MemoryBudgetError(InputError):
    """The work cannot be done within the memory budget the user gave."""


class TransientError(InputError):
    """A problem outside scalereg that may pass by itself (a store that cannot be reached
    for a moment, or keeps throttling).  Tasks retry it with backoff; when it outlasts
    the retries it is reported like a user error: one line, naming the input."""


# What the system says when a place cannot be written for a reason the user must fix:
# a full disk or quota, a read-only filesystem, no permission, a file where a folder
# should be.  Retrying does not help; saying where does.
_USER_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "ENAMETOOLONG"}


def input_error_from_os(error: BaseException, subject: str | None = None) -> InputError | None:
    """``error`` (an OSError, or one raised from one) as the user's problem when it is
    one of those, naming ``subject`` (the output being written) or else the path the
    system named; None for anything else (a transient fault or a bug)."""
    import errno

    item: BaseException | None = error
    seen = 0
    while item is not None and seen < 10:
        if isinstance(item, OSError) and errno.errorcode.get(item.errno or 0) in _USER_ERRNOS:
            problem = f"cannot be written: {item.strerror or type(item).__name__}"
            if subject is not None:
                return InputError(subject, problem + (f" (writing {item.filename})" if item.filename else ""))
            return InputError(str(item.filename or "output"), problem)
        item, seen = item.__cause__ or item.__context__, seen + 1
    return None
