"""Flow: warp a full-resolution OME-Zarr volume (or labels) onto a reference grid, tile by tile.

Produces: the warped OME-Zarr pyramid at ``output`` (validated NGFF metadata, marked
complete only when every level is written; tiles with completion markers are
skipped on a re-run), a table artifact per level (including the tiles that mapped
entirely outside the moving image), a progress artifact and a markdown report.

Run as a script:  python -m flows.warp_volume --transform TX_DIR --moving M.ome.zarr --reference F.ome.zarr --out W.ome.zarr
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from flows.checked_flow import checked_flow
from flows.cluster import AUTO, run_stage_on_cluster
from flows.parameters import Cluster, Interpolation, MemoryBudget, Output, Uri
from flows.write_levels import write_pyramid
from scalereg.errors import InputError
from scalereg.storage import redact_uri
from scalereg.warp import DEFAULT_WARP_BUDGET, plan_warp
from tasks.artifacts import artifact_key, publish_report
from tasks.failures import BAD_INPUT



@checked_flow(name="warp-volume", log_prints=True)
def warp_volume(
    transform: Annotated[list[Uri], Field(min_length=1)],
    moving: Uri,
    reference: Uri,
    output: Output,
    level: Annotated[int, Field(ge=0)] = 0,
    moving_level: Annotated[int, Field(ge=0)] | None = None,
    interpolation: Interpolation = "linear",
    inverse: bool = False,
    output_dtype: str | None = None,
    memory_budget: MemoryBudget = AUTO,
    overwrite: bool = False,
    cluster: Cluster = "local",
) -> dict[str, Any] | State:
    """Resample ``moving`` onto the grid of ``reference`` (its level ``level``) through
    ``transform`` on the Dask cluster ``cluster``.

    Args:
        transform: A scalereg transform directory, or ANTs transform files in
            ants.apply_transforms order (.mat affines, `[file.mat,1]` to invert, .nii.gz fields).
        moving: The OME-Zarr pyramid to warp (local path or s3:// URI).
        reference: The OME-Zarr pyramid whose grid the output takes.
        output: The OME-Zarr pyramid to write: a local path or s3:// URI; runs from a deployment
            write only under the worker's SCALEREG_OUTPUT_ROOTS.
        level: Reference level that sets the output grid (0: full resolution).
        moving_level: Moving level to read (default: the one matching the output's spacing).
        interpolation: `linear`, `bspline` (cubic), `nearest`, or `label` (label values preserved).
        inverse: Use the transform directory's inverse: fixed-space images onto the moving grid.
        output_dtype: Output type (default: the moving image's); values are rounded and clipped.
        memory_budget: Memory per task (sets the tile size): `auto` or a size such as `768MiB`.
        overwrite: Replace an existing output.
        cluster: Dask cluster: `local`, `slurm` or another profile in infra/clusters, a cluster
            YAML file, or tcp://host:port of a running scheduler.
    """
    parameters = dict(
        transform=transform, moving=moving, reference=reference, output=output, level=level, moving_level=moving_level,
        interpolation=interpolation, inverse=inverse, output_dtype=output_dtype, memory_budget=memory_budget, overwrite=overwrite,
    )  # fmt: skip
    inputs = [("moving input", moving), ("reference input", reference), *(("transform input", t) for t in transform)]
    return run_stage_on_cluster(warp_volume_tiles, cluster, "warp", parameters, output="output", inputs=inputs)


@flow(name="warp-volume-tiles", log_prints=True)
def warp_volume_tiles(
    transform: list[str],
    moving: str,
    reference: str,
    output: str,
    level: int = 0,
    moving_level: int | None = None,
    interpolation: Interpolation = "linear",
    inverse: bool = False,
    output_dtype: str | None = None,
    memory_budget: str = DEFAULT_WARP_BUDGET,
    overwrite: bool = False,
    tasks_per_level: int = 8,
) -> dict[str, Any] | State:
    """The warp's tiles (level 0) and the output pyramid's blocks as tasks, level after level."""
    logger = get_run_logger()
    try:
        plan = plan_warp(
            transform,
            moving,
            reference,
            output,
            level=level,
            moving_level=moving_level,
            interpolation=interpolation,
            inverse=inverse,
            output_dtype=output_dtype,
            memory_budget=memory_budget,
        )
        name = artifact_key(plan.layout.name)
        written = write_pyramid(plan, name, overwrite, tasks_per_level, label="tiles")
        if isinstance(written, State):
            return written
        state, rows = written
        if state == "complete":
            return {"output": plan.output, "state": state, "levels": []}
        outside = rows[0].get("tiles_outside", 0)
        if outside:
            logger.warning("%d tiles of %d mapped entirely outside the moving image (written as background)", outside, rows[0]["blocks"])
        publish_report(name, _report(plan, rows, transform, inverse), f"Warp of {redact_uri(moving)}")
        return Completed(data={"output": plan.output, "state": state, "levels": rows}, message=f"wrote {plan.output}")
    except InputError as error:
        return Failed(name=BAD_INPUT, message=str(error))


def _report(plan, rows: list[dict[str, Any]], transform: list[str], inverse: bool) -> str:
    source = plan.source
    lines = [
        f"# Warp of `{redact_uri(source.uri)}`",
        "",
        f"Transform: {', '.join(f'`{t}`' for t in ([transform] if isinstance(transform, str) else transform))}"
        f"{' (inverse)' if inverse else ''}; interpolation {source.interpolation}",
        f"Output: `{plan.output}` on the reference grid {' x '.join(map(str, plan.layout.shape))} "
        f"({plan.layout.dtype}, orientation {plan.layout.geometry.orientation})",
        "",
        "| level | shape | spacing | tiles/blocks | skipped | outside | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['level']} | {' x '.join(map(str, row['shape']))} | {' x '.join(f'{s:g}' for s in row['spacing'])} {row['unit']} | "
            f"{row['blocks']} | {row['skipped']} | {row.get('tiles_outside', '')} | {row['seconds']} |"
        )
    lines += [""] + [f"- note: {note}" for note in plan.notes]
    return "\n".join(lines)


if __name__ == "__main__":
    from scalereg.cli import main

    raise SystemExit(main(["warp", *__import__("sys").argv[1:]]))
