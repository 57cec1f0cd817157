"""Where a flow run may write, and that it writes there alone: the entry-point checks
of every top-level flow.

A run started from a deployment (the Prefect UI, the API, a schedule) writes only
under the worker's ``SCALEREG_OUTPUT_ROOTS`` and is refused when none are set; a
flow called from Python or the CLI is confined only when the variable is set.  Before
writing, a top-level flow run takes the lock of each of its outputs
(`scalereg.output_lock.OutputLock`), so that a second run aimed at one of them is
refused, naming this one.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.runtime import deployment, flow_run

from scalereg.errors import InputError
from scalereg.output_lock import OutputLock
from scalereg.output_roots import ENVIRONMENT_VARIABLE, confine_output, output_roots
from scalereg.storage import is_remote, normalize_uri, output_uri


def checked_output(uri: str, subject: str = "output") -> str:
    """``uri`` normalised and confined (see the module's docstring), never a bucket's root."""
    roots = output_roots()
    if not roots and deployment.id:
        raise InputError(
            subject,
            f"runs from a deployment write only under configured roots, and {ENVIRONMENT_VARIABLE} is not set "
            "in the worker's environment (e.g. /data/registrations:s3://lab/registrations)",
        )
    return output_uri(confine_output(normalize_uri(uri) if is_remote(uri) else uri, roots, subject))  # a URI's own problems first


def lock_outputs(*uris: str) -> ExitStack:
    """Take the lock of each of ``uris`` now, in order, for this flow run; the stack
    returned releases them (use it in a ``with`` statement).  An output that another
    live run is writing raises an InputError naming that run; no lock is kept then."""
    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(__name__)
    run = f"{flow_run.flow_name} {flow_run.name!r} ({flow_run.id})" if flow_run.id else None
    stack = ExitStack()
    try:
        for uri in uris:
            stack.enter_context(OutputLock(uri, run=run, warn=logger.warning))
    except BaseException:
        stack.close()
        raise
    return stack
