"""TIFF volumes: one multi-page / ImageJ / OME-TIFF stack, or one 2D TIFF file per z slice."""

from __future__ import annotations

import glob
import os
import re
import struct
import zlib
from typing import Any

import numpy as np
import tifffile

from scalereg.errors import InputError
from scalereg.io.check_header import DEFLATE_RATIO, check_header
from scalereg.io.source import Region, Source, check_shape
from scalereg.storage import normalize_uri

TIFF_SUFFIXES = (".tif", ".tiff")
# What tifffile raises on a damaged file: its own error, and whatever a garbled tag makes
# its parser trip over (a keyframe that does not match, a tuple where a number belongs,
# a zero tile size).  A file is untrusted input: any of them means it is not readable.
_CORRUPT = (
    tifffile.TiffFileError, OSError, EOFError, ValueError, struct.error, zlib.error,
    RuntimeError, TypeError, IndexError, KeyError, ZeroDivisionError, AttributeError, OverflowError,
)  # fmt: skip


class TiffSource(Source):
    """A z stack from a TIFF file, a directory of 2D TIFF slices, or a glob pattern.

    ``uri`` is a file (pages are z), a directory (its .tif/.tiff files in natural
    order, one per z: ``slice_2`` before ``slice_10``) or a pattern containing
    ``*``, ``?`` or ``[``.  Opening reads tags only, never pixels.

    A read touches only the pages of z0..z1.  Uncompressed pages are cropped on disk
    (only rows y0..y1 are read); compressed pages are decoded whole and then
    cropped, so one z-slab of full pages is the cheapest region to ask for.
    ``preferred_block`` stays None: a tall narrow region still costs whole decoded
    pages, which the caller's tile size should account for.

    TIFF carries no spacing or orientation: those stay None and must come from the
    user.
    """

    def __init__(self, uri: str) -> None:
        self.uri = normalize_uri(uri)
        # per z: the file holding the plane and the page index in that file
        self._files: tuple[str, ...] = ()
        self._pages: tuple[int, ...] = ()
        # for a stack stored as one contiguous uncompressed block: (offset, dtype)
        self._contiguous: tuple[int, str] | None = None
        # an existing name wins over the pattern reading: 'brain[1].tif' is a file
        if os.path.isfile(self.uri):
            self._open_stack()
        elif os.path.isdir(self.uri) or _is_pattern(self.uri):
            self._open_slices(_slice_files(self.uri))
        else:
            raise InputError(self.uri, "no such file or directory")

    # -- opening -------------------------------------------------------------

    def _open_stack(self) -> None:
        try:
            with tifffile.TiffFile(self.uri) as tif:
                if not tif.series:
                    raise InputError(self.uri, "not a readable TIFF file: it holds no image")
                series = tif.series[0]
                if len(tif.series) > 1:
                    shapes = ", ".join(f"{s.shape} {s.dtype}" for s in tif.series[:4])
                    raise InputError(
                        self.uri,
                        f"file holds {len(tif.series)} images of different shapes or types ({shapes}); "
                        "expected one single-channel z stack",
                    )
                depth_axis, shape = _stack_shape(series.shape, series.axes, self.uri)
                if depth_axis not in "ZQI":
                    self.notes = (f"{self.uri}: TIFF axis {depth_axis!r} is read as z",)
                self.shape = check_shape(shape, self.uri)
                self.dtype = np.dtype(series.dtype).newbyteorder("=")
                check_header(self.uri, self.shape, self.dtype)  # before a page of it is listed
                if series.dataoffset is not None:
                    self._contiguous = (int(series.dataoffset), np.dtype(series.dtype).newbyteorder(tif.byteorder).str)
                    needed = series.dataoffset + int(np.prod(self.shape)) * self.dtype.itemsize
                    if os.path.getsize(self.uri) < needed:
                        raise InputError(self.uri, "file is truncated: image data runs past the end of the file")
                else:
                    pages = list(series.pages)
                    if len(pages) != self.shape[0] or any(p is None or p.parent is not tif for p in pages):
                        raise InputError(
                            self.uri,
                            "unsupported TIFF layout: expected one page per z slice in this file "
                            "(multi-file OME-TIFF and 3D tiles are not supported)",
                        )
                    _check_page_bytes(self.uri, self.shape, self.dtype, pages)
                    self._pages = tuple(int(p.index) for p in pages)
                    self._files = (self.uri,) * len(pages)
        except InputError:
            raise
        except _CORRUPT as error:
            raise InputError(self.uri, f"not a readable TIFF file: {error}") from None

    def _open_slices(self, files: list[str]) -> None:
        if not files:
            raise InputError(self.uri, "no .tif/.tiff files match")
        first: tuple[tuple[int, ...], np.dtype] | None = None
        for path in files:
            plane, dtype = _slice_header(path)
            if first is None:
                first = (plane, dtype)
            elif (plane, dtype) != first:
                raise InputError(
                    self.uri,
                    f"slices differ: {files[0]} is {first[0]} {first[1]}, {path} is {plane} {dtype}",
                )
        assert first is not None
        self.shape = check_shape((len(files),) + first[0], self.uri)
        self.dtype = first[1]
        self._files = tuple(files)
        self._pages = (0,) * len(files)

    def inputs(self) -> list[tuple[str, str]]:
        # a directory or a pattern stands for its slice files (a pattern's directory may hold anything else)
        return [("input", path) for path in dict.fromkeys(self._files or (self.uri,))]

    # -- reading -------------------------------------------------------------

    def read(self, region: Region) -> np.ndarray:
        zs, ys, xs = (range(*s.indices(n)) for s, n in zip(region, self.shape))
        out = np.empty((len(zs), len(ys), len(xs)), dtype=self.dtype)
        if not out.size:
            return out
        current = self.uri
        try:
            if self._contiguous is not None:
                self._read_contiguous(out, zs, ys, xs)
                return out
            tif: tifffile.TiffFile | None = None
            try:
                for i, z in enumerate(zs):
                    if tif is None or self._files[z] != current:
                        if tif is not None:
                            tif.close()
                        current = self._files[z]
                        tif = tifffile.TiffFile(current)
                    out[i] = _read_page(tif, tif.pages[self._pages[z]], ys, xs, current)
            finally:
                if tif is not None:
                    tif.close()
        except InputError:
            raise
        except _CORRUPT as error:
            raise InputError(current, f"file is truncated or corrupt: {error}") from None
        return out

    def _read_contiguous(self, out: np.ndarray, zs: range, ys: range, xs: range) -> None:
        offset, dtype = self._contiguous  # type: ignore[misc]
        plane_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        with open(self.uri, "rb") as fh:
            for i, z in enumerate(zs):
                out[i] = _read_rows(fh, offset + z * plane_bytes, np.dtype(dtype), self.shape[1:], ys, xs)


def _is_pattern(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def _natural_key(path: str) -> list:
    """Sort key that orders embedded numbers by value: slice_2 before slice_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def _slice_files(uri: str) -> list[str]:
    if not os.path.isdir(uri):
        files = [f for f in glob.glob(uri) if os.path.isfile(f)]
    else:
        # hidden files skipped: macOS leaves '._slice_0001.tif' resource forks behind
        files = [
            os.path.join(uri, name)
            for name in os.listdir(uri)
            if name.lower().endswith(TIFF_SUFFIXES) and not name.startswith(".")
        ]
    return sorted(files, key=_natural_key)


def _slice_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Plane shape and dtype of a one-image TIFF, from its tags only."""
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                raise InputError(path, f"has {len(tif.pages)} pages; expected one 2D slice per file")
            page = tif.pages.first
            if page.samplesperpixel != 1 or len(page.shape) != 2:
                raise InputError(path, f"slice has shape {page.shape}: RGB or multi-channel images are not supported")
            plane, dtype = tuple(int(s) for s in page.shape), np.dtype(page.dtype).newbyteorder("=")
            _check_page_bytes(path, (1, *plane), dtype, [page])
            return plane, dtype
    except InputError:
        raise
    except _CORRUPT as error:
        raise InputError(path, f"not a readable TIFF file: {error}") from None


# TIFF compression code -> the greatest ratio it can reach (None: no simple bound, not checked)
_TIFF_RATIOS = {1: 1.0, 8: DEFLATE_RATIO, 32946: DEFLATE_RATIO, 5: 2731.0, 32773: 64.0}


def _check_page_bytes(subject: str, shape: tuple[int, ...], dtype: np.dtype, pages: list[Any]) -> None:
    """The pages' stored bytes against what their shape needs (`check_header`)."""
    check_header(subject, shape, dtype)
    ratio = _TIFF_RATIOS.get(int(getattr(pages[0], "compression", 0) or 0)) if pages else None
    if ratio is None:
        return
    stored = sum(int(sum(page.databytecounts)) for page in pages)
    check_header(subject, shape, dtype, data_bytes=stored, compression_ratio=ratio)


def _stack_shape(shape: tuple[int, ...], axes: str, subject: str) -> tuple[str, tuple[int, ...]]:
    """(letter of the depth axis, (Z, Y, X)) of a tifffile series, or an InputError."""
    if "S" in axes and shape[axes.index("S")] > 1:
        raise InputError(subject, f"pages are RGB or multi-sample (shape {shape}, axes {axes}); expected one channel")
    if "C" in axes and shape[axes.index("C")] > 1:
        raise InputError(
            subject,
            f"file declares {shape[axes.index('C')]} channels (shape {shape}, axes {axes}); "
            "expected a single-channel z stack: save it with z as slices, or one channel per file",
        )
    kept = [(a, n) for a, n in zip(axes, shape) if n > 1 or a in "YX"]
    if [a for a, _ in kept][-2:] != ["Y", "X"] or len(kept) != 3:
        # a lone 2D image, or several non-singleton axes: check_shape says which
        return "Z", tuple(n for _, n in kept)
    return kept[0][0], tuple(n for _, n in kept)


def _read_page(tif: tifffile.TiffFile, page: tifffile.TiffPage, ys: range, xs: range, path: str) -> np.ndarray:
    """The (ys, xs) crop of one page, reading only its rows when it is stored raw."""
    if page.is_memmappable and len(page.shape) == 2:
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        return _read_rows(tif.filehandle, int(page.dataoffsets[0]), dtype, page.shape, ys, xs)
    data = page.asarray()
    if data.ndim != 2:
        raise InputError(path, f"page {page.index} has shape {data.shape}; expected a 2D single-channel image")
    return data[ys.start : ys.stop, xs.start : xs.stop]


def _read_rows(fh: Any, offset: int, dtype: np.dtype, plane: tuple[int, int], ys: range, xs: range) -> np.ndarray:
    """Rows ys of a raw C-order (Y, X) plane at ``offset``, cropped to xs."""
    row_bytes = plane[1] * dtype.itemsize
    fh.seek(offset + ys.start * row_bytes)
    count = len(ys) * row_bytes
    data = fh.read(count)
    if len(data) != count:
        raise EOFError(f"expected {count} bytes at offset {offset}, the file ends after {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(len(ys), plane[1])[:, xs.start : xs.stop]
