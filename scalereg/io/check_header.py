"""What a volume's header claims, checked before anything is allocated or read.

A header is only a claim: a few bytes can say 100000^3 voxels.  Every reader calls
`check_header` as soon as it knows a shape and a type, and before it reads, allocates
or iterates anything of that size, so that such a file is refused in a fraction of a
second, naming the file and what is wrong:

- a volume larger than `max_voxels` (``SCALEREG_MAX_VOXELS``, default 2**50: a whole
  human brain at 1 um is about 1.2e15 voxels) or an axis longer than 2**31;
- more voxels than the file's bytes can hold: uncompressed data exactly, compressed
  data through its codec's greatest possible ratio (deflate: 1032 to 1);
- voxel types scalereg cannot represent faithfully: complex numbers, RGB and other
  multi-component or structured voxels, text; boolean voxels are a mask (labels).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from scalereg.errors import InputError

MAX_AXIS = 2**31
DEFAULT_MAX_VOXELS = 2**50
# deflate (gzip, zlib) cannot compress better than 1032:1 (258-byte matches in 2 bits)
DEFLATE_RATIO = 1032


def max_voxels() -> int:
    text = os.environ.get("SCALEREG_MAX_VOXELS")
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise InputError("SCALEREG_MAX_VOXELS", f"{text!r} is not a number of voxels") from None
    if value <= 0:
        raise InputError("SCALEREG_MAX_VOXELS", f"{text!r} must be positive")
    return value


def check_header(
    subject: str,
    shape: Sequence[int],
    dtype: np.dtype | str,
    data_bytes: int | None = None,
    compression_ratio: float | None = None,
) -> None:
    """Refuse a header whose ``shape`` and ``dtype`` no volume of scalereg's can have.

    ``data_bytes``: the bytes the file has for the voxels (None: not known, e.g. Zarr,
    whose missing chunks are legitimate background); ``compression_ratio``: the
    greatest ratio the data's codec reaches (1 or None: stored uncompressed)."""
    check_dtype(subject, dtype)
    sizes = [int(s) for s in shape]
    if any(s > MAX_AXIS for s in sizes):
        raise InputError(subject, f"the header claims an axis of {max(sizes)} voxels (shape {tuple(sizes)}); axes longer than 2**31 are not supported")
    voxels = math.prod(sizes)
    limit = max_voxels()
    if voxels > limit:
        raise InputError(
            subject,
            f"the header claims {voxels:.3g} voxels (shape {tuple(sizes)}), more than the {limit:.3g} scalereg accepts "
            "(SCALEREG_MAX_VOXELS); the header is corrupt, or the volume must be split",
        )
    if data_bytes is None:
        return
    needed = voxels * np.dtype(dtype).itemsize
    ratio = compression_ratio or 1
    if data_bytes * ratio < needed:
        if ratio == 1:
            raise InputError(subject, f"file is truncated: it holds {data_bytes} bytes of voxel data, the header needs {needed}")
        raise InputError(
            subject,
            f"the header claims {voxels:.3g} voxels ({needed:.3g} bytes), more than the file's {data_bytes} bytes of compressed "
            f"data can hold (at most {ratio}:1); the header is corrupt or the file truncated",
        )


def check_dtype(subject: str, dtype: np.dtype | str) -> None:
    """Refuse voxel types that scalereg would have to cast with a loss (complex, RGB,
    structured, text); boolean voxels are refused by the planner unless they are labels."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        raise InputError(subject, f"voxel type {dtype!r} is not one scalereg can read") from None
    if kind.kind == "c":
        raise InputError(subject, f"voxels are complex numbers ({kind}); scalereg registers real intensities: save the magnitude or the real part as a real-valued volume")
    if kind.fields is not None or kind.kind == "V" or kind.subdtype is not None:
        raise InputError(subject, f"voxels have several components ({kind}: RGB or another vector type); scalereg needs one value per voxel: save one channel")
    if kind.kind not in "biuf":
        raise InputError(subject, f"voxel type {kind} is not numeric")
