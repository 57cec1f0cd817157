"""Top-level flows that refuse credentials in their parameters before Prefect sees them.

Prefect records a flow run's parameters (in its database, shown in the UI) when it
creates the run, before the parameters are validated; a URL such as
``s3://KEY:SECRET@bucket/x`` given from Python would be stored there even though the
run then fails.  `checked_flow` makes a flow whose call looks at its parameters first:
a URL with credentials ends the call with a Failed state (``BadInput``, the URL masked)
and no run is created.  Runs from a deployment never get that far: the parameter
schema's pattern (`flows.parameters.Uri`) has the server refuse them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from prefect import Flow
from prefect.states import Failed
from pydantic import BaseModel

from scalereg.errors import BAD_INPUT_STATE, InputError
from scalereg.redact import has_url_credentials, refuse_url_credentials


class CheckedFlow(Flow):
    """A `prefect.Flow` whose call refuses URL credentials in any parameter (see the
    module's docstring); everything else is Prefect's."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        found = credentials_in({**dict(enumerate(args)), **kwargs})
        if found is not None:
            if return_state:
                return Failed(name=BAD_INPUT_STATE, message=str(found))
            raise found
        return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)


def checked_flow(**options: Any) -> Callable[[Callable[..., Any]], CheckedFlow]:
    """``@flow(**options)`` making a `CheckedFlow`."""
    return lambda fn: CheckedFlow(fn=fn, **options)


def credentials_in(parameters: dict[Any, Any]) -> InputError | None:
    """The refusal of the first parameter value that holds a URL with credentials
    (strings, paths, and inside lists, dicts and models), naming the parameter."""
    pending: list[tuple[str, Any]] = [(str(name), value) for name, value in parameters.items()]
    while pending:
        name, value = pending.pop()
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, (str, os.PathLike)):
            if has_url_credentials(os.fspath(value)):
                try:
                    refuse_url_credentials(os.fspath(value), subject=name)
                except InputError as error:
                    return error
        elif isinstance(value, dict):
            pending.extend((f"{name}.{key}", item) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            pending.extend((f"{name}.{index}", item) for index, item in enumerate(value))
    return None
