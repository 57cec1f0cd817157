"""Anatomical orientation codes, their NGFF (RFC-4) form and ITK direction matrices.

Convention (brainglobe's): a 3-letter code, one letter per array axis in the array's
own axis order (z, y, x).  Each letter names the anatomical side where index 0 of
that axis lies; indices run toward the opposite side.  ``"asr"``: index 0 of axis 0
is anterior and the axis runs toward posterior; axis 1 runs superior -> inferior;
axis 2 runs right -> left.

In OME-Zarr the same fact is stored per axis as RFC-4 anatomical orientation:
``{"type": "anatomical", "value": "anterior-to-posterior"}``.

ITK (and so ANTs) works in LPS+ physical space: +x toward the patient's Left, +y
toward Posterior, +z toward Superior.  ``direction_matrix(code)`` gives the LPS unit
vector of each array axis (columns in z, y, x array order).
"""

from __future__ import annotations

import numpy as np

from scalereg.errors import InputError

# letter -> (unit vector in LPS along which the index increases, its RFC-4 value)
_LETTERS: dict[str, tuple[tuple[int, int, int], str]] = {
    "r": ((1, 0, 0), "right-to-left"),
    "l": ((-1, 0, 0), "left-to-right"),
    "a": ((0, 1, 0), "anterior-to-posterior"),
    "p": ((0, -1, 0), "posterior-to-anterior"),
    "i": ((0, 0, 1), "inferior-to-superior"),
    "s": ((0, 0, -1), "superior-to-inferior"),
}
_FROM_RFC4 = {value: letter for letter, (_, value) in _LETTERS.items()}
_PAIR = {"r": "lr", "l": "lr", "a": "ap", "p": "ap", "s": "si", "i": "si"}


def parse_orientation(code: str, subject: str = "orientation") -> str:
    """Validate a 3-letter orientation code and return it in lower case.

    Each of the three anatomical axes (left/right, anterior/posterior,
    superior/inferior) must appear exactly once.
    """
    text = str(code).strip().lower()
    if len(text) != 3 or any(letter not in _LETTERS for letter in text):
        raise InputError(
            subject,
            f"unknown orientation code {code!r}: expected 3 letters from a/p, s/i, l/r, "
            "one per array axis naming the side where index 0 lies (e.g. 'asr')",
        )
    if len({_PAIR[letter] for letter in text}) != 3:
        raise InputError(
            subject,
            f"contradictory orientation code {code!r}: each of the anatomical axes "
            "(a/p, s/i, l/r) must appear exactly once",
        )
    return text


def orientation_to_rfc4(code: str) -> list[dict[str, str]]:
    """RFC-4 axis orientation objects for the array axes (z, y, x) of ``code``."""
    return [{"type": "anatomical", "value": _LETTERS[letter][1]} for letter in parse_orientation(code)]


def orientation_from_rfc4(values: list[str | dict | None], subject: str = "orientation") -> str | None:
    """Orientation code from RFC-4 values (strings or ``{"type", "value"}`` dicts).

    Returns None when no axis carries an orientation.
    """
    plain = [v.get("value") if isinstance(v, dict) else v for v in values]
    if all(v is None for v in plain):
        return None
    letters = []
    for value in plain:
        if value not in _FROM_RFC4:
            raise InputError(
                subject,
                f"anatomical orientation {value!r} is not one of {sorted(_FROM_RFC4)}",
            )
        letters.append(_FROM_RFC4[value])
    return parse_orientation("".join(letters), subject)


def direction_matrix(code: str) -> np.ndarray:
    """3x3 matrix whose columns are the LPS unit vectors of array axes (z, y, x)."""
    return np.array([_LETTERS[letter][0] for letter in parse_orientation(code)], dtype=float).T


def orientation_from_direction(direction: np.ndarray, subject: str = "direction") -> tuple[str, float]:
    """Nearest orientation code to an LPS direction matrix (columns: array axes z, y, x).

    Returns the code and the largest angle (degrees) between an array axis and the
    anatomical axis it was assigned to; non-zero means the data is oblique.
    """
    direction = np.asarray(direction, dtype=float)
    if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
        raise InputError(subject, "direction matrix must be a finite 3x3 matrix")
    norms = np.linalg.norm(direction, axis=0)
    if np.any(norms == 0) or abs(np.linalg.det(direction / norms)) < 1e-6:
        raise InputError(subject, "direction matrix is singular: axes are not independent")
    unit = direction / norms
    letters = []
    worst = 0.0
    used: set[int] = set()
    # assign each array axis to its dominant LPS axis, strongest first
    order = np.argsort(-np.abs(unit).max(axis=0))
    chosen: dict[int, str] = {}
    for column in order:
        candidates = [row for row in np.argsort(-np.abs(unit[:, column])) if row not in used]
        row = int(candidates[0])
        used.add(row)
        component = unit[row, column]
        worst = max(worst, float(np.degrees(np.arccos(min(1.0, abs(component))))))
        vector = [0, 0, 0]
        vector[row] = 1 if component > 0 else -1
        chosen[int(column)] = next(k for k, (v, _) in _LETTERS.items() if list(v) == vector)
    letters = [chosen[c] for c in range(3)]
    return "".join(letters), worst


def reorientation(source: str, target: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Axis permutation and flips that take an array in ``source`` code to ``target``.

    ``np.flip(np.transpose(a, perm), axis=[i for i, f in enumerate(flips) if f])``
    gives the array in the target orientation.
    """
    source, target = parse_orientation(source), parse_orientation(target)
    perm = []
    flips = []
    for letter in target:
        index = next(i for i, s in enumerate(source) if _PAIR[s] == _PAIR[letter])
        perm.append(index)
        flips.append(source[index] != letter)
    return tuple(perm), tuple(flips)  # type: ignore[return-value]
