"""Flow: find the volumes under an input location and start one registration per new one.

For every volume directly under ``inputs`` (a local directory or an s3:// prefix:
NIfTI, TIFF, NRRD/MHA files, Zarr/OME-Zarr directories) the sweep starts a run of the
register-brain deployment against the fixed reference, writing to
``output/<volume name>``, unless the volume is done (its ``report.md``, written last,
exists) or a run for it is in flight.  Runs are created with an idempotency key per
volume and attempt, so the Prefect server itself refuses a second run even when two
sweeps overlap.  A failed run is retried by a later sweep up to ``max_attempts``
times; a run that failed on bad input is not retried.

Produces: a table artifact with every volume and what the sweep did with it.
Meant to run on a schedule (deployments/prefect.yaml) or from the UI.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed, State
from pydantic import Field

from flows.checked_flow import checked_flow
from flows.outputs import checked_output
from flows.parameters import Chunks, Cluster, ImageSource, Output, RegistrationOptions, SourceGeometry, Uri, WarpOptions
from scalereg.errors import BAD_INPUT_STATE, InputError
from scalereg.find_volumes import FoundVolume, find_volumes
from scalereg.output_rules import check_apart
from scalereg.storage import exists, join, normalize_uri
from tasks.artifacts import artifact_key
from tasks.failures import BAD_INPUT

REGISTER_BRAIN = "register-brain/register-brain"
SWEEP_TAG = "scalereg-sweep"


@checked_flow(name="sweep-inputs", log_prints=True)
def sweep_inputs(
    inputs: Uri,
    fixed: ImageSource,
    output: Output,
    moving: SourceGeometry = SourceGeometry(),
    registration: RegistrationOptions = RegistrationOptions(),
    warp: WarpOptions = WarpOptions(),
    chunks: Chunks = 128,
    cluster: Cluster = "local",
    deployment: Annotated[str, Field(min_length=3)] = REGISTER_BRAIN,
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 2,
    min_age_seconds: Annotated[float, Field(ge=0)] = 60,
) -> dict[str, list[str]] | State:
    """Start a registration of every new volume under ``inputs`` to ``fixed``.

    Args:
        inputs: Local directory or s3:// prefix holding the volumes, one file (NIfTI, TIFF,
            NRRD/MHA) or one Zarr/OME-Zarr directory each.
        fixed: The reference every volume is registered to, and its geometry.
        output: Each volume's outputs go to `output/<volume name>`: a local path or s3:// URI
            under the worker's SCALEREG_OUTPUT_ROOTS.
        moving: Spacing, unit and orientation given to every volume found (TIFFs store none);
            what is given here overrides what the files say.
        registration: Registration schedule and memory budget of every run.
        warp: Interpolation and memory budget of every run's warp.
        chunks: Chunk edge (voxels) of the OME-Zarr pyramids written.
        cluster: Dask cluster of every run: `local`, `slurm` or another profile in
            infra/clusters, a cluster YAML file, or tcp://host:port.
        deployment: The register-brain deployment to start runs of, as `flow/deployment`.
        max_attempts: Runs a volume gets before the sweep stops retrying its failures.
        min_age_seconds: Local files modified more recently are left for the next sweep (they
            may still be being copied in).
    """
    logger = get_run_logger()
    try:
        output = checked_output(output)
        # outputs inside the inputs would be found as volumes by the next sweep
        check_apart(output, [("inputs location", normalize_uri(inputs)), ("fixed input", fixed.uri)])
        volumes = find_volumes(inputs, min_age_seconds)
    except InputError as error:
        return Failed(name=BAD_INPUT, message=str(error))
    common = {
        "fixed": fixed.model_dump(mode="json"),
        "registration": registration.model_dump(mode="json"),
        "warp": warp.model_dump(mode="json"),
        "chunks": chunks,
        "cluster": cluster,
    }
    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name(deployment).id
        except ObjectNotFound:
            return Failed(name=BAD_INPUT, message=f"deployment: no deployment {deployment!r} on this server (prefect deploy --all in deployments/)")
        rows = []
        for volume in volumes:
            out = join(output, volume.name)
            action, run = _next_action(client, deployment_id, volume, out, max_attempts)
            if action.startswith("start"):
                parameters = {**common, "moving": {"uri": volume.uri, **moving.model_dump(mode="json")}, "out": out}
                run = run_deployment(
                    deployment, parameters=parameters, timeout=0, as_subflow=False, flow_run_name=f"{volume.name}-{action.split()[-1]}",
                    tags=[SWEEP_TAG, _volume_tag(volume, out)], idempotency_key=f"{_volume_tag(volume, out)}/{action.split()[-1]}",
                )  # fmt: skip
                logger.info("%s: %s (flow run %s)", volume.name, action, run.name)
            rows.append({"volume": volume.name, "source": volume.uri, "output": out, "action": action, "flow_run": str(run.id) if run else ""})
    create_table_artifact(table=rows or [{"volume": "", "action": f"no volumes under {inputs}"}], key=artifact_key("sweep", _slug(inputs)), description=f"Volumes under {inputs}")
    summary: dict[str, list[str]] = {}
    for row in rows:
        summary.setdefault(row["action"].split()[0], []).append(row["volume"])
    return summary


def _next_action(client: Any, deployment_id: Any, volume: FoundVolume, out: str, max_attempts: int) -> tuple[str, FlowRun | None]:
    """What to do with ``volume``: "done", "running", "failed ..." (not retried) or
    "start attempt-N", with the flow run that decided it."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]), tags=FlowRunFilterTags(all_=[_volume_tag(volume, out)]))
    )
    runs = sorted(runs, key=lambda run: run.created)
    latest = runs[-1] if runs else None
    if exists(join(out, "report.md")):  # written last by register-brain
        return "done", latest
    if latest is None:
        return "start attempt-1", None
    state = latest.state
    if state is not None and not state.is_final():
        return "running", latest
    failures = sum(1 for run in runs if run.state is not None and run.state.is_final() and not run.state.is_completed())
    if state is not None and state.name == BAD_INPUT_STATE:
        return f"failed on bad input, not retried: {state.message}", latest
    if failures >= max_attempts:
        return f"failed {failures} times, not retried: {state.message if state else ''}", latest
    # a completed run whose report is gone (outputs removed), or a failure to retry
    return f"start attempt-{len(runs) + 1}", latest


def _volume_tag(volume: FoundVolume, out: str) -> str:
    """Names a volume's runs: same source and same output, same tag."""
    digest = hashlib.sha256(f"{volume.uri}\n{out}".encode()).hexdigest()[:16]
    return f"scalereg-volume-{digest}"


def _slug(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
