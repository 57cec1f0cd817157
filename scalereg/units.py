"""Byte sizes as users write them ('8GiB', '512MB', 1e9)."""

from __future__ import annotations

import math
import re

from scalereg.errors import InputError

LARGEST_SIZE = 2**60  # bytes: an exbibyte, more than any machine or cluster has
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(value: str | int | float, subject: str = "memory-budget") -> int:
    """Bytes from '8GiB', '512 MB', '1.5e9' or a number."""
    if isinstance(value, (int, float)):
        number, suffix = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _FACTORS:
            raise InputError(subject, f"cannot read {value!r} as a size (e.g. 8GiB, 512MB)")
        number, suffix = float(match.group(1)), match.group(2).lower()
    size = number * _FACTORS[suffix]
    if not math.isfinite(size) or size > LARGEST_SIZE:
        raise InputError(subject, f"size {value!r} is not a plausible amount of memory (at most {LARGEST_SIZE / 1024**6:g} EiB)")
    if int(size) <= 0:
        raise InputError(subject, f"size {value!r} must be positive")
    return int(size)


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
