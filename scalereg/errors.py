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
