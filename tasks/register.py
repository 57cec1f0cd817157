"""Tasks of the registration flow: one per registration step (pyramid level), then the outputs."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from scalereg.register.register_pyramids import RegistrationRun
from tasks.failures import fail_on_input_error, retry_transient

@task(
    name="register-step",
    task_run_name="step-{label}",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,  # the step's own record (result.json with the inputs' key) decides reuse
)
@fail_on_input_error
def register_step(run: RegistrationRun, index: int, label: str = "") -> dict[str, Any]:
    """Run registration step ``index`` (antsRegistration on one pyramid level of fixed and
    moving) from the transforms the earlier steps recorded; reused if already done."""
    return run.run_step(index)


@task(name="finish-registration", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
@fail_on_input_error
def finish_registration(run: RegistrationRun) -> dict[str, Any]:
    """Compose the steps' transforms, write the OME-Zarr fields and the manifest (last)."""
    return run.finish()
