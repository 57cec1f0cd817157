"""Flow: register a moving OME-Zarr pyramid to a fixed one, coarse to fine, one task per step.

Produces: the transform directory at ``out`` (see `scalereg.register.register_pyramids`;
``manifest.json`` written last), a table artifact with one row per step (level,
spacing, shape, transform, metric before/after, Jacobian, seconds, peak memory), a
QC picture per step (mid-slices, checkerboard and edges, before/after) as a markdown
artifact, and a report.  A re-run with the same inputs reuses finished steps.

Run as a script:  python -m flows.register_volume --fixed F.ome.zarr --moving M.ome.zarr --out TX
"""

from __future__ import annotations

import base64
from pathlib import PurePosixPath
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State
from pydantic import Field

from flows.checked_flow import checked_flow
from flows.cluster import AUTO, run_on_workers, run_stage_on_cluster
from flows.parameters import Cluster, MemoryBudget, Output, Schedule, Uri
from scalereg.errors import InputError
from scalereg.register.ants_image import load_ants
from scalereg.register.register_pyramids import DEFAULT_MEMORY_BUDGET, RegistrationRun, registration_inputs
from scalereg.storage import join
from tasks.artifacts import artifact_key
from tasks.failures import BAD_INPUT, bad_input_message
from tasks.register import finish_registration, register_step


@checked_flow(name="register-volume", log_prints=True)
def register_volume(
    fixed: Uri,
    moving: Uri,
    out: Output,
    schedule: Schedule = "mouse",
    memory_budget: MemoryBudget = AUTO,
    fixed_mask: Uri | None = None,
    moving_mask: Uri | None = None,
    normalize: bool = False,
    overwrite: bool = False,
    cluster: Cluster = "local",
) -> dict[str, Any] | State:
    """Register ``moving`` to ``fixed`` (OME-Zarr pyramids) coarse to fine with the
    schedule ``schedule`` on the Dask cluster ``cluster``.

    Args:
        fixed: The fixed (reference) OME-Zarr pyramid: a local path or s3:// URI.
        moving: The moving OME-Zarr pyramid.
        out: The transform directory to write: a local path or s3:// URI; runs from a deployment
            write only under the worker's SCALEREG_OUTPUT_ROOTS.
        schedule: `mouse`, `human`, or the path of a YAML/JSON schedule file.
        memory_budget: Memory for one registration step: `auto` or a size such as `8GiB`.
        fixed_mask: OME-Zarr mask pyramid on the fixed image's grid.
        moving_mask: OME-Zarr mask pyramid on the moving image's grid.
        normalize: Clip intensities to the 0.5-99.5 percentiles and scale to [0, 1].
        overwrite: Replace a transform directory written for other inputs.
        cluster: Dask cluster: `local`, `slurm` or another profile in infra/clusters, a cluster
            YAML file, or tcp://host:port of a running scheduler.
    """
    parameters = dict(
        fixed=fixed, moving=moving, out=out, schedule=schedule, memory_budget=memory_budget,
        fixed_mask=fixed_mask, moving_mask=moving_mask, normalize=normalize, overwrite=overwrite,
    )  # fmt: skip
    inputs = registration_inputs(fixed, moving, schedule, fixed_mask, moving_mask)
    return run_stage_on_cluster(register_volume_steps, cluster, "registration", parameters, output="out", inputs=inputs, tasks_per_level=False)


@flow(name="register-volume-steps", log_prints=True)
def register_volume_steps(
    fixed: str,
    moving: str,
    out: str,
    schedule: str = "mouse",
    memory_budget: str = DEFAULT_MEMORY_BUDGET,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    normalize: bool = False,
    overwrite: bool = False,
) -> dict[str, Any] | State:
    """The registration steps as tasks on the flow's task runner, one after the other
    (each starts from the transforms of the ones before)."""
    logger = get_run_logger()
    run_on_workers(load_ants)  # on every worker while the steps are planned here (where ANTs is not needed)
    try:
        run = RegistrationRun(fixed, moving, out, schedule, memory_budget, fixed_mask, moving_mask, normalize, overwrite=overwrite)
    except InputError as error:
        return Failed(name=BAD_INPUT, message=str(error))
    # keyed by the directory and its parent: "transform" alone would mix every brain's runs
    root = PurePosixPath(run.root)  # a path or an s3:// URI
    name = artifact_key(root.parent.name, root.name)
    for note in run.plan.notes:
        logger.warning(note)
    if run.manifest() is not None:
        logger.info("%s is already complete for these inputs: nothing to do", run.root)
        steps = [step_row({**result, "reused": True}) for result in run.manifest()["steps"]]  # type: ignore[index]
        return {"out": str(run.root), "state": "complete", "steps": steps}
    rows = []
    for index, label in enumerate(run.step_names()):
        future = register_step.submit(run, index, label=label)
        future.result(raise_on_failure=False)
        failure = bad_input_message(future.state)
        if failure:
            return Failed(name=BAD_INPUT, message=failure)
        result = future.result()
        rows.append(step_row(result))
        logger.info("%s%s: %s", label, " (reused)" if result.get("reused") else "", _metric_text(result))
        create_table_artifact(table=rows, key=artifact_key(name, "steps"), description=f"Registration steps of {run.root} so far")
        publish_picture(name, result, run.read_bytes(f"steps/{label}/qc.png"), join(run.root, "steps", label, "qc.png"))
    finished = finish_registration.submit(run)
    finished.result(raise_on_failure=False)
    failure = bad_input_message(finished.state)
    if failure:
        return Failed(name=BAD_INPUT, message=failure)
    manifest = finished.result()
    create_markdown_artifact(markdown=_report(run, rows, manifest), key=artifact_key(name, "report"), description=f"Registration of {moving} to {fixed}")
    return Completed(data={"out": str(run.root), "state": "new", "steps": rows}, message=f"wrote {run.root}")


def step_row(result: dict[str, Any]) -> dict[str, Any]:
    """The table row of one step: what a person compares between levels."""
    key = "ncc" if result["metric"] in ("cc", "meansquares") else "mi"
    return {
        "step": result["step"],
        "transform": result["transform"],
        "spacing_um": result["spacing_um"],
        "shape": " x ".join(map(str, result["shape"])),
        "metric": key,
        "before": round(result["before"][key], 4),
        "after": round(result["after"][key], 4),
        "accepted": result["accepted"],
        "jacobian_min": round(result["jacobian_min"], 3) if "jacobian_min" in result else "",
        "jacobian_nonpositive_percent": result.get("jacobian_percent_nonpositive", ""),
        "seconds": result["seconds"],
        "peak_rss_gib": round(result["peak_rss"] / 2**30, 2),
        "reused": bool(result.get("reused")),
        "ran_on": _ran_on(result.get("ran_on") or {}),
    }


def _ran_on(where: dict[str, Any]) -> str:
    """host (and SLURM job) of a step, as the table shows it."""
    return where.get("host", "") + (f" (job {where['slurm_job']})" if where.get("slurm_job") else "")


def publish_picture(name: str, result: dict[str, Any], picture: bytes | None, path: str) -> None:
    """The step's QC picture as a markdown artifact (embedded, with the file's path)."""
    if picture is None:
        return
    data = base64.b64encode(picture).decode()
    create_markdown_artifact(
        markdown=f"### {result['step']}: {_metric_text(result)}\n\n![{result['step']}](data:image/png;base64,{data})\n\n`{path}`",
        key=artifact_key(name, "qc", result["step"]),
        description=f"QC of {result['step']}: mid-slices, checkerboard and fixed edges over moving, before and after",
    )


def _metric_text(result: dict[str, Any]) -> str:
    key = "ncc" if result["metric"] in ("cc", "meansquares") else "mi"
    verdict = "" if result["accepted"] else " (discarded: the metric got worse)"
    return f"{key} {result['before'][key]:.4f} -> {result['after'][key]:.4f}, {result['seconds']:.1f} s{verdict}"


def _report(run: RegistrationRun, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    lines = [
        f"# Registration of `{run.moving}` to `{run.fixed}`",
        "",
        f"Transform directory: `{run.root}` (schedule {run.plan.schedule.name}, budget {manifest['plan']['memory_budget']})",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    lines += ["", "Outputs: " + ", ".join(f"`{k}`: `{v}`" for k, v in manifest["outputs"].items() if isinstance(v, str))]
    lines += [f"- note: {note}" for note in manifest["plan"]["notes"]]
    return "\n".join(lines)
