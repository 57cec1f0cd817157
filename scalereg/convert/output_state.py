"""The life of a conversion's output: create or resume it, record levels, finish it."""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import numpy as np

from scalereg import __version__
from scalereg.convert.plan_conversion import ConversionPlan
from scalereg.convert.run_block import PROGRESS_DIR, SCRATCH_DIR
from scalereg.errors import InputError
from scalereg.omezarr.level_checksums import ALGORITHM as CHECKSUM_ALGORITHM
from scalereg.omezarr.level_checksums import level_checksum
from scalereg.omezarr.create_pyramid_store import STATUS_KEY, create_pyramid_store, mark_complete, mark_level_complete
from scalereg.output_rules import existing_output
from scalereg.storage import join, open_group, redact_uri, remove_tree
from scalereg.storage_errors import translating

_on_output = translating(lambda plan, *args, **kwargs: plan.output)

OutputState = Literal["new", "resume", "complete"]


@_on_output
def output_state(plan: ConversionPlan, overwrite: bool = False) -> OutputState:
    """What writing ``plan`` will do to its output, without touching it.

    Nothing there (or an empty directory): ``"new"``.  A pyramid scalereg wrote for the
    same conversion (same fingerprint) is resumed (``"resume"``) or, if finished, left
    alone (``"complete"``); with ``overwrite`` a pyramid scalereg wrote is replaced
    (``"new"``).  Anything else is refused (`scalereg.output_rules.existing_output`):
    a pyramid for other inputs without ``overwrite``, and whatever scalereg did not
    write, with or without it.
    """
    options = plan.storage_options
    if existing_output(plan.output, "pyramid", options) == "nothing" or overwrite:
        return "new"
    status = _status(plan.output, options)
    if status.get("fingerprint") == plan.fingerprint:
        return "complete" if status.get("status") == "complete" else "resume"
    raise InputError(plan.output, "output already exists (a pyramid written for other inputs); pass --overwrite (overwrite=True) to replace it")


@_on_output
def prepare_output(plan: ConversionPlan, overwrite: bool = False) -> OutputState:
    """Create the output store (see `output_state` for what happens to an existing one:
    only a pyramid scalereg wrote is ever removed)."""
    options = plan.storage_options
    state = output_state(plan, overwrite)
    if state == "resume":
        plan.source.prepare(plan.output, options)
    if state != "new":
        return state
    remove_tree(plan.output, options)  # nothing, an empty directory or a pyramid of ours (output_state)
    provenance = {
        "source": redact_uri(plan.source.uri),
        "source_format": type(plan.source).__name__,
        "notes": list(plan.notes),
    }
    create_pyramid_store(plan.output, plan.layout, storage_options=options, provenance=provenance)
    group = open_group(plan.output, mode="r+", storage_options=options)
    status = dict(group.attrs[STATUS_KEY])
    status["fingerprint"] = plan.fingerprint
    group.attrs[STATUS_KEY] = status
    plan.source.prepare(plan.output, options)
    return "new"


@_on_output
def finish_level(plan: ConversionPlan, level: int, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Record level ``level`` as complete and return its row for the level table."""
    spec = plan.layout.levels[level]
    if plan.levels[level].kind == "fused":
        results = []  # written by level 0's blocks, one read of the source for both
    row = {
        "level": level,
        "shape": list(spec.shape),
        "spacing": list(spec.scale),
        "unit": plan.layout.geometry.unit,
        "chunks": list(spec.chunks),
        "bytes": int(math.prod(spec.shape) * np.dtype(plan.layout.dtype).itemsize),
        "blocks": len(results),
        "skipped": sum(1 for r in results if r.get("skipped")),
        "seconds": round(seconds, 3),
    }
    for key in ("tiles_outside", "voxels_outside"):  # what a warped source reports
        if any(key in r for r in results):
            row[key] = sum(int(r.get(key, 0)) for r in results)
    # checksums of the levels these blocks wrote (a fused level's come with level 0's)
    checksums = _level_checksums(plan, results)
    mark_level_complete(plan.output, level, plan.storage_options, record={k: row[k] for k in ("blocks", "seconds")} | checksums.pop(level, {}))
    for other, record in checksums.items():
        mark_level_complete(plan.output, other, plan.storage_options, record=record)
    return row


def _level_checksums(plan: ConversionPlan, results: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """{level: {"checksum": ...}} for each level whose every chunk the results hashed."""
    digests: dict[int, dict[str, str]] = {}
    for result in results:
        for level, chunk_digests in (result.get("digests") or {}).items():
            digests.setdefault(int(level), {}).update(chunk_digests)
    checksums = {}
    for level, chunk_digests in digests.items():
        spec = plan.layout.levels[level]
        checksum = level_checksum(chunk_digests, spec.shape, spec.chunks)
        if checksum is not None:
            checksums[level] = {"checksum": checksum}
    return checksums


@_on_output
def finish_conversion(plan: ConversionPlan) -> None:
    """Drop the per-block markers and scratch files and mark the output complete (the last write)."""
    remove_tree(join(plan.output, PROGRESS_DIR), plan.storage_options)
    remove_tree(join(plan.output, SCRATCH_DIR), plan.storage_options)
    mark_complete(plan.output, plan.storage_options, extra={"manifest": _manifest(plan)})


def _manifest(plan: ConversionPlan) -> dict[str, Any]:
    """What the output is and how it was made, with its levels' checksums (what
    `scalereg validate` checks): stored with the status, written last."""
    status = _status(plan.output, plan.storage_options)
    recorded = {entry["level"]: entry.get("checksum") for entry in status.get("levels_complete", [])}
    return {
        "written_by": f"scalereg {__version__}",
        "versions": {name: _version(name) for name in ("zarr", "numpy", "antspyx", "ome-zarr")},
        "source": redact_uri(plan.source.uri),
        "source_identity": plan.source.identity(),
        "fingerprint": plan.fingerprint,
        "parameters": {"method": plan.method, "ngff_version": plan.layout.ngff_version, "dtype": plan.layout.dtype,
                       "chunks": list(plan.layout.levels[0].chunks), "memory_budget": plan.memory_budget},
        "checksum_algorithm": CHECKSUM_ALGORITHM,
        "levels": [{"path": spec.path, "shape": list(spec.shape), "checksum": recorded.get(index)} for index, spec in enumerate(plan.layout.levels)],
    }  # fmt: skip


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _status(uri: str, options: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return dict(open_group(uri, mode="r", storage_options=options).attrs.get(STATUS_KEY, {}))
    except Exception:  # not a zarr group at all: treat as foreign content
        return {}
