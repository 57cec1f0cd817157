"""Flow: convert a volume (NIfTI, TIFF, NRRD/MHA, Zarr, OME-Zarr) to an OME-Zarr pyramid.

Produces: the OME-Zarr pyramid at ``output`` (NGFF 0.4 or 0.5, marked complete only
when every level is written), a table artifact per level (shape, spacing, chunks,
bytes, time), a progress artifact while blocks complete and a markdown report.

Run as a script:  python -m flows.convert_volume SOURCE OUTPUT.ome.zarr --spacing 50 50 50
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field
from prefect.states import Completed, Failed, State

from flows.checked_flow import checked_flow
from flows.cluster import AUTO, run_stage_on_cluster
from flows.parameters import Chunks, Cluster, MemoryBudget, Orientation, Output, Spacing, Unit, Uri
from flows.write_levels import write_pyramid
from scalereg.convert import plan_conversion
from scalereg.convert.plan_conversion import DEFAULT_MEMORY_BUDGET
from scalereg.errors import InputError
from scalereg.storage import redact_uri
from tasks.artifacts import artifact_key, publish_report
from tasks.failures import BAD_INPUT


@checked_flow(name="convert-volume", log_prints=True)
def convert_volume(
    source: Uri,
    output: Output,
    spacing: Spacing | None = None,
    unit: Unit | None = None,
    orientation: Orientation | None = None,
    ngff_version: Literal["0.4", "0.5"] = "0.5",
    chunks: Chunks = 128,
    shards: Annotated[int, Field(ge=8)] | None = None,
    labels: bool = False,
    memory_budget: MemoryBudget = AUTO,
    overwrite: bool = False,
    cluster: Cluster = "local",
) -> dict[str, Any] | State:
    """Convert ``source`` to an OME-Zarr pyramid at ``output`` on the Dask cluster
    ``cluster`` (a running scheduler given by its tcp:// address is used and left running).

    Args:
        source: Local path or s3:// URI of a NIfTI, TIFF (file, directory or glob of slices),
            NRRD/MHA, Zarr or OME-Zarr volume.
        output: The OME-Zarr pyramid to write (e.g. brain.ome.zarr): a local path or s3:// URI;
            runs from a deployment write only under the worker's SCALEREG_OUTPUT_ROOTS.
        spacing: Voxel size per array axis (z, y, x), in `unit`; overrides the file's (a TIFF needs it).
        unit: Unit of `spacing` (an NGFF space unit); overrides the file's.
        orientation: 3-letter origin code per array axis (z, y, x), e.g. `asr`; overrides the file's.
        ngff_version: OME-Zarr version: 0.4 (Zarr v2) or 0.5 (Zarr v3).
        chunks: Chunk edge (voxels) of the pyramid.
        shards: Shard edge (voxels; NGFF 0.5 only, a multiple of `chunks`).
        labels: A label image: mode downsampling, label values preserved.
        memory_budget: Memory per task (sets the block size): `auto` or a size such as `512MiB`.
        overwrite: Replace an existing output.
        cluster: Dask cluster: `local`, `slurm` or another profile in infra/clusters, a cluster
            YAML file, or tcp://host:port of a running scheduler.
    """
    parameters = dict(
        source=source, output=output, spacing=spacing, unit=unit, orientation=orientation, ngff_version=ngff_version,
        chunks=chunks, shards=shards, labels=labels, memory_budget=memory_budget, overwrite=overwrite,
    )  # fmt: skip
    return run_stage_on_cluster(convert_volume_blocks, cluster, "conversion", parameters, output="output", inputs=[("input", source)])


@flow(name="convert-volume-blocks", log_prints=True)
def convert_volume_blocks(
    source: str,
    output: str,
    spacing: list[float] | None = None,
    unit: str | None = None,
    orientation: str | None = None,
    ngff_version: Literal["0.4", "0.5"] = "0.5",
    chunks: int = 128,
    shards: int | None = None,
    labels: bool = False,
    memory_budget: str = DEFAULT_MEMORY_BUDGET,
    overwrite: bool = False,
    tasks_per_level: int = 8,
) -> dict[str, Any] | State:
    """The blocks of every level as tasks on the flow's task runner, level after level.

    Blocks are batched into at most ``tasks_per_level`` tasks per level: a task costs
    Prefect a few tenths of a second, a block often not much more.
    """
    try:
        plan = plan_conversion(
            source,
            output,
            spacing=spacing,
            unit=unit,
            orientation=orientation,
            ngff_version=ngff_version,
            chunks=chunks,
            shards=shards,
            labels=labels,
            memory_budget=memory_budget,
        )
        name = artifact_key(plan.layout.name)
        written = write_pyramid(plan, name, overwrite, tasks_per_level)
        if isinstance(written, State):
            return written
        state, rows = written
        if state == "complete":
            return {"output": plan.output, "state": state, "levels": []}
        publish_report(name, _report(plan, rows), f"Conversion of {redact_uri(plan.source.uri)}")
        return Completed(data={"output": plan.output, "state": state, "levels": rows}, message=f"wrote {plan.output}")
    except InputError as error:
        return Failed(name=BAD_INPUT, message=str(error))


def _report(plan, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Conversion of `{redact_uri(plan.source.uri)}`",
        "",
        f"Output: `{plan.output}` (OME-Zarr {plan.layout.ngff_version}, {plan.layout.dtype}, "
        f"orientation {plan.layout.geometry.orientation or 'unknown'})",
        "",
        "| level | shape | spacing | chunks | bytes | blocks | skipped | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['level']} | {' x '.join(map(str, row['shape']))} | "
            f"{' x '.join(f'{s:g}' for s in row['spacing'])} {row['unit']} | {' x '.join(map(str, row['chunks']))} | "
            f"{row['bytes']} | {row['blocks']} | {row['skipped']} | {row['seconds']} |"
        )
    lines += [""] + [f"- note: {note}" for note in plan.notes]
    return "\n".join(lines)


if __name__ == "__main__":
    from scalereg.cli import main

    raise SystemExit(main(["convert", *__import__("sys").argv[1:]]))
