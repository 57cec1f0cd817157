"""Flow: the whole pipeline for one brain, on one Dask cluster.

fixed and moving sources -> OME-Zarr pyramids (convert, skipped for complete OME-Zarr
inputs) -> coarse-to-fine registration (one task per level) -> tiled warp of the
full-resolution moving volume onto the fixed grid -> output pyramid -> report.

Produces, under ``out``: ``fixed.ome.zarr`` and ``moving.ome.zarr`` (when converted),
``transform/`` (the transform directory), ``warped.ome.zarr`` and ``report.md``; as
Prefect artifacts, every stage's tables, QC pictures, progress and reports, and a
final report with links to every output.  A re-run with the same inputs resumes:
finished pyramids, registration steps and warp tiles are skipped (by their completion
records and fingerprints), and the report says what was skipped.

Run from the command line:  scalereg run --fixed F --moving M --out DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State

from flows.aws_credentials import environment, read_aws_credentials
from flows.checked_flow import checked_flow
from flows.cluster import AUTO, cluster_capacity, cluster_spec, dask_cluster, runner_for, without_flow_heartbeats
from flows.convert_volume import convert_volume_blocks
from flows.outputs import checked_output, lock_outputs
from flows.parameters import Chunks, Cluster, ImageSource, Output, RegistrationOptions, WarpOptions
from flows.register_volume import register_volume_steps
from flows.side_by_side import first_failure, run_side_by_side
from flows.warp_volume import warp_volume_tiles
from scalereg.convert import plan_conversion
from scalereg.errors import InputError
from scalereg.omezarr import read_pyramid
from scalereg.output_rules import check_apart
from scalereg.register.register_pyramids import registration_inputs
from scalereg.storage import join, normalize_uri, redact_uri, write_bytes
from tasks.artifacts import artifact_key
from tasks.failures import BAD_INPUT


@checked_flow(name="register-brain", log_prints=True)
def register_brain(
    fixed: ImageSource,
    moving: ImageSource,
    out: Output,
    registration: RegistrationOptions = RegistrationOptions(),
    warp: WarpOptions = WarpOptions(),
    chunks: Chunks = 128,
    overwrite: bool = False,
    cluster: Cluster = "local",
    aws_credentials_block: str | None = None,
) -> dict[str, Any] | State:
    """Register the brain ``moving`` to ``fixed`` and warp it onto the fixed grid at full
    resolution; outputs under ``out``.  S3 credentials come from the environment
    (boto3's chain) or, if named, a Prefect AwsCredentials block.  From Python, an image
    may be given as a plain path and the option models as dicts.

    Args:
        fixed: The reference volume (an atlas or template) and its geometry.
        moving: The volume to register (the sample) and its geometry.
        out: Output directory: fixed.ome.zarr, moving.ome.zarr, transform/, warped.ome.zarr, report.md.
            A local path or s3:// URI; runs from a deployment write only under the worker's
            SCALEREG_OUTPUT_ROOTS (a relative path is taken under the first local root).
        registration: Registration schedule and memory budget.
        warp: Interpolation and memory budget of the full-resolution warp.
        chunks: Chunk edge (voxels) of the OME-Zarr pyramids written.
        overwrite: Replace outputs that were written for other inputs.
        cluster: Dask cluster: `local`, `slurm` or another profile in infra/clusters, a cluster
            YAML file, or tcp://host:port of a running scheduler.
        aws_credentials_block: Name of a Prefect AwsCredentials block for S3 (default: the
            worker's environment).
    """
    logger = get_run_logger()
    try:
        cluster_spec(cluster)  # a profile that does not load fails here, as bad input
        given, out = out, checked_output(out)  # under the output roots, never a bucket's root
        # before a lock is made in it; named as given
        check_apart(out, registration_inputs(fixed.uri, moving.uri, registration.schedule), subject=given if given != out else None)
        credentials = read_aws_credentials(aws_credentials_block)
        with environment(credentials):  # the locks may be in a bucket only the block opens
            # the directory and every stage output in it: a stage flow run alone on one is refused too
            locks = lock_outputs(out, *(join(out, name) for name in ("fixed.ome.zarr", "moving.ome.zarr", "transform", "warped.ome.zarr")))
    except InputError as error:
        return Failed(name=BAD_INPUT, message=str(error))
    stages: list[dict[str, Any]] = []
    # the cluster starts inside: its workers inherit the block's credentials
    with environment(credentials), locks, dask_cluster(cluster) as address, without_flow_heartbeats():
        runner = runner_for(address)
        capacity = cluster_capacity(address)
        tasks_per_level = 4 * capacity.threads
        try:
            budgets = {
                "conversion": capacity.memory_budget(AUTO, "conversion"),
                "registration": capacity.memory_budget(registration.memory_budget, "registration"),
                "warp": capacity.memory_budget(warp.memory_budget, "warp"),
            }
        except InputError as error:
            return Failed(name=BAD_INPUT, message=str(error))
        pyramids, conversions = {}, {}
        for role, image in (("fixed", fixed), ("moving", moving)):
            if _usable_pyramid(image.uri) and not image.overrides_anything():
                pyramids[role] = normalize_uri(image.uri)
                continue
            pyramids[role] = join(out, f"{role}.ome.zarr")
            conversions[role] = (
                convert_volume_blocks.with_options(task_runner=runner, name=f"convert-{role}"),
                dict(source=image.uri, output=pyramids[role], **image.overrides(), chunks=chunks, memory_budget=budgets["conversion"],
                     overwrite=overwrite, tasks_per_level=tasks_per_level),
            )  # fmt: skip
        try:  # every source opened (headers only) before anything is written: a bad one fails the run now
            for _, parameters in conversions.values():
                plan_conversion(**{key: parameters[key] for key in ("source", "output", "spacing", "unit", "orientation", "chunks", "memory_budget")})
        except InputError as error:
            return Failed(name=BAD_INPUT, message=str(error))
        # the two conversions side by side on the cluster: each fills the other's idle gaps
        states = dict(zip(conversions, run_side_by_side(list(conversions.values()))))
        failed = first_failure(list(states.values()))
        if failed is not None:
            return Failed(name=failed.name, message=failed.message)
        for role in ("fixed", "moving"):
            text = _state_text(states[role].result()) if role in states else "skipped: already an OME-Zarr pyramid"
            stages.append({"stage": f"convert {role}", "state": text, "output": pyramids[role]})

        transform = join(out, "transform")
        state = register_volume_steps.with_options(task_runner=runner)(
            fixed=pyramids["fixed"], moving=pyramids["moving"], out=transform, schedule=registration.schedule,
            memory_budget=budgets["registration"], overwrite=overwrite, return_state=True,
        )  # fmt: skip
        if state.is_failed():
            return Failed(name=state.name, message=state.message)
        registered = state.result()
        stages.append({"stage": "register", "state": _registration_state_text(registered), "output": transform})

        warped = join(out, "warped.ome.zarr")
        state = warp_volume_tiles.with_options(task_runner=runner)(
            transform=[transform], moving=pyramids["moving"], reference=pyramids["fixed"], output=warped,
            interpolation=warp.interpolation, memory_budget=budgets["warp"], overwrite=overwrite,
            tasks_per_level=tasks_per_level, return_state=True,
        )  # fmt: skip
        if state.is_failed():
            return Failed(name=state.name, message=state.message)
        stages.append({"stage": "warp", "state": _state_text(state.result()), "output": warped})
        report = _report(fixed.uri, moving.uri, out, stages, registered)
        write_bytes(join(out, "report.md"), report.encode())

    create_markdown_artifact(markdown=report, key=artifact_key(Path(out).name, "pipeline-report"), description=f"register-brain: {redact_uri(moving.uri)} to {redact_uri(fixed.uri)}")
    for stage in stages:
        logger.info("%s: %s", stage["stage"], stage["state"])
    return Completed(data={"out": out, "stages": stages, "report": join(out, "report.md")}, message=f"wrote {out}")


def _usable_pyramid(source: str) -> bool:
    """Whether ``source`` is a finished OME-Zarr pyramid that can be used as it is."""
    try:
        layout = read_pyramid(normalize_uri(source))
    except Exception:  # not an OME-Zarr at all (a file, a glob of slices): it gets converted
        return False
    return (layout.attributes.get("status") or {}).get("status") in (None, "complete") and layout.geometry.orientation is not None


def _state_text(result: dict[str, Any]) -> str:
    state = result.get("state", "new")
    if state == "complete":
        return "skipped: already complete for these inputs"
    skipped = sum(row.get("skipped", 0) for row in result.get("levels", []))
    return "resumed" + (f" ({skipped} blocks skipped)" if skipped else "") if state == "resume" else "written"


def _registration_state_text(registered: dict[str, Any]) -> str:
    if registered["state"] == "complete":
        return _state_text(registered)
    reused = sum(1 for row in registered["steps"] if row.get("reused"))
    return registered["state"] + (f" ({reused} steps reused)" if reused else "")


def _report(fixed: str, moving: str, out: str, stages: list[dict[str, Any]], registered: dict[str, Any]) -> str:
    lines = [
        f"# register-brain: `{redact_uri(moving)}` to `{redact_uri(fixed)}`",
        "",
        "| stage | what happened | output |",
        "|---|---|---|",
    ]
    lines += [f"| {s['stage']} | {s['state']} | `{s['output']}` |" for s in stages]
    rows = registered.get("steps") or []
    if rows and isinstance(rows[0], dict) and "before" in rows[0]:
        lines += ["", "| step | transform | spacing (um) | metric | before | after | accepted | seconds |", "|---|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r['step']} | {r['transform']} | {r['spacing_um']} | {r['metric']} | {r['before']} | {r['after']} | {r['accepted']} | {r['seconds']} |"
            for r in rows
        ]
    lines += ["", f"QC pictures: `{join(out, 'transform', 'steps')}/*/qc.png`", ""]
    return "\n".join(lines)
