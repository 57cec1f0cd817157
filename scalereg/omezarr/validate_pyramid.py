"""Check an OME-Zarr image: the NGFF spec (via ome-zarr-models) and scalereg's own promises."""

from __future__ import annotations

import math
from typing import Any

import ome_zarr_models

from scalereg.errors import InputError
from scalereg.omezarr.pyramid_layout import level_translation
from scalereg.omezarr.read_pyramid import read_pyramid
from scalereg.omezarr.level_checksums import known_algorithm, level_data_problem
from scalereg.storage import join, open_array, open_group


def validate_pyramid(uri: str, storage_options: dict[str, Any] | None = None, checksums: bool = True) -> list[str]:
    """Problems found in the image at ``uri`` (empty when it is valid and complete).

    Checks: the metadata validates with ome-zarr-models; every level's shape and
    translation follow from level 0 (voxel centres consistent across levels); a
    scalereg-written image is marked complete; and, with ``checksums``, every level's
    data still has the checksum its manifest recorded (this reads every chunk).
    """
    problems: list[str] = []
    try:
        ome_zarr_models.open_ome_zarr(open_group(uri, mode="r", storage_options=storage_options))
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the validator says of this input is a finding
        problems.append(f"ome-zarr-models: {(str(error).splitlines() or [type(error).__name__])[0]}")
    try:
        layout = read_pyramid(uri, storage_options)
    except InputError as error:
        return problems + [error.problem]
    base = layout.levels[0]
    for index, level in enumerate(layout.levels[1:], start=1):
        previous = layout.levels[index - 1]
        ratio = [s / p for s, p in zip(level.scale, previous.scale)]
        if any(abs(r - round(r)) > 1e-6 or round(r) < 1 for r in ratio):
            problems.append(f"level {level.path}: scale {level.scale} is not an integer multiple of level {previous.path}'s")
            continue
        expected_shape = tuple(math.ceil(n / round(r)) for n, r in zip(previous.shape, ratio))
        if expected_shape != level.shape:
            problems.append(f"level {level.path}: shape {level.shape}, expected {expected_shape} from level {previous.path}")
        total = [round(s / b) for s, b in zip(level.scale, base.scale)]
        expected = level_translation(base.translation, base.scale, total)
        if any(abs(t - e) > 1e-6 * max(1.0, abs(e)) for t, e in zip(level.translation, expected)):
            problems.append(
                f"level {level.path}: translation {level.translation} puts voxel centres off level 0's; expected {expected}"
            )
    status = layout.attributes.get("status") or {}
    if status and status.get("status") != "complete":
        problems.append("marked incomplete: the run that wrote it did not finish (re-run it to resume)")
    manifest = status.get("manifest") if isinstance(status.get("manifest"), dict) else {}
    algorithm = manifest.get("checksum_algorithm")
    if checksums and not known_algorithm(algorithm):
        problems.append(f"the manifest's checksums use an algorithm this scalereg does not know ({algorithm!r}): not checked")
    elif checksums:
        for entry in manifest.get("levels", []) if isinstance(manifest.get("levels"), list) else []:
            if not isinstance(entry, dict) or not entry.get("checksum") or entry.get("path") not in {level.path for level in layout.levels}:
                continue  # only the image's own levels: a manifest names nothing else to read
            array = open_array(join(uri, entry["path"]), storage_options=storage_options)
            problem = level_data_problem(array, entry, algorithm)
            if problem:
                problems.append(f"level {entry['path']}: {problem}")
    return problems
