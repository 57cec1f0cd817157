"""Where a flow run may write: the entry-point check of every top-level flow.

A run started from a deployment (the Prefect UI, the API, a schedule) writes only
under the worker's ``SCALEREG_OUTPUT_ROOTS`` and is refused when none are set; a
flow called from Python or the CLI is confined only when the variable is set.
"""

from __future__ import annotations

from prefect.runtime import deployment

from scalereg.errors import InputError
from scalereg.output_roots import ENVIRONMENT_VARIABLE, confine_output, output_roots
from scalereg.storage import output_uri


def checked_output(uri: str, subject: str = "output") -> str:
    """``uri`` normalised and confined (see the module's docstring), never a bucket's root."""
    roots = output_roots()
    if not roots and deployment.id:
        raise InputError(
            subject,
            f"runs from a deployment write only under configured roots, and {ENVIRONMENT_VARIABLE} is not set "
            "in the worker's environment (e.g. /data/registrations:s3://lab/registrations)",
        )
    return output_uri(confine_output(uri, roots, subject))
