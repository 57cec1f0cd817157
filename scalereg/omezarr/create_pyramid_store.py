"""Create an empty OME-Zarr pyramid (metadata and arrays) ready for block writes."""

from __future__ import annotations

from typing import Any

import numcodecs
import numpy as np
import zarr

from scalereg import __version__
from scalereg.omezarr.multiscales_metadata import multiscales_metadata
from scalereg.omezarr.pyramid_layout import AXES, PyramidLayout
from scalereg.storage import open_group

STATUS_KEY = "scalereg"


def create_pyramid_store(
    uri: str,
    layout: PyramidLayout,
    storage_options: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Create the group and one empty array per level, marked ``incomplete``.

    The status becomes ``complete`` only when `mark_complete` runs after every
    level has been written, so a crashed run never looks finished.
    """
    zarr_format = 2 if layout.ngff_version == "0.4" else 3
    status = {
        "version": __version__,
        "status": "incomplete",
        "kind": "labels" if layout.labels else "intensity",
        "orientation": layout.geometry.orientation,
        "levels_complete": [],
        **({"provenance": provenance} if provenance else {}),
    }
    # the status comes with the group's first metadata: an output interrupted at any
    # point is recognisably scalereg's (and incomplete), so that --overwrite may replace it
    group = open_group(uri, mode="w", storage_options=storage_options, zarr_format=zarr_format, attributes={STATUS_KEY: status})
    dtype = np.dtype(layout.dtype)
    for level in layout.levels:
        kwargs: dict[str, Any] = dict(
            name=level.path,
            shape=level.shape,
            chunks=level.chunks,
            dtype=dtype,
            fill_value=0,
        )
        if zarr_format == 2:
            kwargs["compressors"] = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["compressors"] = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
            kwargs["dimension_names"] = list(AXES)
            if level.shards is not None:
                kwargs["shards"] = level.shards
        group.create_array(**kwargs)
    group.attrs.update({**multiscales_metadata(layout), STATUS_KEY: status})


def mark_level_complete(uri: str, level: int, storage_options: dict[str, Any] | None = None, record: dict | None = None) -> None:
    """Record that every block of ``level`` is written (called by the single coordinating process)."""
    group = open_group(uri, mode="r+", storage_options=storage_options)
    status = dict(group.attrs[STATUS_KEY])
    entries = status.get("levels_complete", [])
    earlier = next((entry for entry in entries if entry.get("level") == level), {})
    done = [entry for entry in entries if entry.get("level") != level]
    done.append({**earlier, "level": level, **(record or {})})  # a record adds to what the level has
    status["levels_complete"] = sorted(done, key=lambda entry: entry["level"])
    group.attrs[STATUS_KEY] = status


def mark_complete(uri: str, storage_options: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Flip the status to ``complete`` (last step of a successful write)."""
    group = open_group(uri, mode="r+", storage_options=storage_options)
    status = dict(group.attrs[STATUS_KEY])
    status.update(extra or {})
    status["status"] = "complete"
    group.attrs[STATUS_KEY] = status
