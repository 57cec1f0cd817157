"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) volumes, through SimpleITK.

SimpleITK parses the header (size, pixel type, spacing, LPS origin and direction).
Regions are read with ImageFileReader's extract index/size, which streams for
MetaImage (even compressed).  ITK's NRRD reader does not stream: it loads the whole
volume for every extract, so raw and gzip NRRD data (the encodings nearly every
NRRD uses) are read here directly, touching only the region's bytes; other NRRD
encodings fall back to ITK with a note.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from scalereg.errors import InputError
from scalereg.geometry import geometry_from_lps, parse_unit
from scalereg.io.check_header import DEFLATE_RATIO, check_header
from scalereg.io.native_output import native_output
from scalereg.io.source import Region, Source, check_shape
from scalereg.storage import normalize_uri

# ITK picks its reader by a case-sensitive extension match; naming it accepts 'BRAIN.MHA'
_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
ITK_SUFFIXES = tuple(_IMAGE_IO)

_DTYPES = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}
_CORRUPT = (RuntimeError, OSError, EOFError, ValueError, zlib.error)
sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's warnings would go to the terminal, not to the log
# gzip data is skipped by decompressing into a buffer of this size, not all at once
_SKIP_CHUNK = 4 << 20
# a header line longer than this is not a header (a binary file named .nrrd)
_HEADER_LINE = 1 << 16


@dataclass(frozen=True)
class _NrrdData:
    """Where a raw or gzip NRRD keeps its voxels."""

    path: str
    offset: int  # of the raw data, or of the gzip stream
    compressed: bool
    dtype: str  # with the file's byte order


class ItkSource(Source):
    """A NRRD or MetaImage volume as a (z, y, x) array in LPS physical space.

    Compressed data has no random access: each read of a gzip NRRD or compressed
    MetaImage decompresses from the start of the data up to the region's last
    voxel, so read it in whole z-slabs.

    Unit: MetaImage has no unit field and NRRD's ``space units`` is optional; both
    are millimetres by ITK convention, so that is assumed unless a NRRD header says
    otherwise.  The caller can override it.
    """

    def __init__(self, uri: str) -> None:
        self.uri = normalize_uri(uri)
        if not os.path.isfile(self.uri):
            raise InputError(self.uri, "no such file or directory")
        if not self.uri.lower().endswith(ITK_SUFFIXES):
            raise InputError(self.uri, f"not a NRRD or MetaImage file name (expected {', '.join(ITK_SUFFIXES)})")
        reader = self._reader()
        with native_output() as said:  # ITK's readers print their complaints themselves
            try:
                reader.ReadImageInformation()
            except RuntimeError as error:
                failure = error
            else:
                failure = None
        if failure is not None:
            reason = said[0] if said else _itk_message(failure)
            raise InputError(self.uri, f"not a readable NRRD/MetaImage file: {reason}")
        if reader.GetNumberOfComponents() != 1:
            raise InputError(
                self.uri,
                f"pixels have {reader.GetNumberOfComponents()} components (vector/RGB image); expected a scalar volume",
            )
        if reader.GetPixelID() not in _DTYPES:
            raise InputError(self.uri, f"unsupported pixel type {reader.GetPixelIDTypeAsString()}")
        self.dtype = np.dtype(_DTYPES[reader.GetPixelID()])

        size = tuple(int(s) for s in reader.GetSize())
        ndim = len(size)
        # (x, y, z, 1) is a 3D volume; ITK collapses an axis whose extract size is 0
        self._collapse = ndim == 4 and size[3] == 1
        self.shape = check_shape((size[:3] if self._collapse else size)[::-1], self.uri)

        notes: list[str] = []
        is_nrrd = _IMAGE_IO[os.path.splitext(self.uri)[1].lower()] == "NrrdImageIO"
        header = _nrrd_header(self.uri) if is_nrrd else None
        self.unit = "millimeter"
        if header is not None:
            self.unit = _nrrd_unit(header[0], self.uri, notes)
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(ndim, ndim)[:3, :3]
        geometry = geometry_from_lps(
            spacing=reader.GetSpacing()[:3][::-1],
            origin_lps=reader.GetOrigin()[:3],
            direction_lps=direction[:, ::-1],  # ITK columns are (x, y, z)
            unit=self.unit or "millimeter",
            subject=self.uri,
        )
        self.spacing = geometry.spacing
        self.origin = geometry.origin
        self.orientation = geometry.orientation
        notes.extend(geometry.notes)
        if header is not None and "space" not in header[0] and "spacedirections" not in header[0]:
            # ITK would call this LPS-aligned; the file only gives voxel sizes
            self.origin = self.orientation = None
            notes.append(f"{self.uri}: NRRD header has no 'space'; orientation and origin are unknown")

        self._nrrd: _NrrdData | None = None
        if header is not None:
            self._nrrd = _nrrd_data(self.uri, *header, self.shape, self.dtype)
            if self._nrrd is None:
                notes.append(
                    f"{self.uri}: this NRRD layout is read whole by ITK for every region; "
                    "convert it to raw or gzip encoding (or .mha) for large volumes"
                )
        self.notes = tuple(notes)
        # the header's claim against the bytes the file has, before anything is read
        self._data_files, data_bytes, ratio = (
            _nrrd_extent(self.uri, header[0], header[1]) if header is not None else _metaimage_extent(self.uri)
        )
        check_header(self.uri, self.shape, self.dtype, data_bytes=data_bytes, compression_ratio=ratio)

    def inputs(self) -> list[tuple[str, str]]:
        return [("input", self.uri), *(("input", path) for path in self._data_files if path != self.uri)]

    def _reader(self) -> sitk.ImageFileReader:
        # built per call: SimpleITK objects do not pickle
        reader = sitk.ImageFileReader()
        reader.SetFileName(self.uri)
        reader.SetImageIO(_IMAGE_IO[os.path.splitext(self.uri)[1].lower()])
        return reader

    def read(self, region: Region) -> np.ndarray:
        zs, ys, xs = (range(*s.indices(n)) for s, n in zip(region, self.shape))
        if not (len(zs) and len(ys) and len(xs)):
            # an extract size of 0 means "collapse this axis" to ITK, not "empty"
            return np.empty((len(zs), len(ys), len(xs)), dtype=self.dtype)
        try:
            if self._nrrd is None:
                return self._read_itk(zs, ys, xs)
            if self._nrrd.compressed:
                return self._read_gzip(self._nrrd, zs, ys, xs)
            return self._read_raw(self._nrrd, zs, ys, xs)
        except _CORRUPT as error:
            message = _itk_message(error) if isinstance(error, RuntimeError) else str(error)
            raise InputError(self.uri, f"file is truncated or corrupt: {message}") from None

    def _read_itk(self, zs: range, ys: range, xs: range) -> np.ndarray:
        reader = self._reader()
        extra = (0,) if self._collapse else ()
        reader.SetExtractIndex((xs.start, ys.start, zs.start) + extra)
        reader.SetExtractSize((len(xs), len(ys), len(zs)) + extra)
        block = sitk.GetArrayFromImage(reader.Execute())
        return block.reshape(len(zs), len(ys), len(xs)).astype(self.dtype, copy=False)

    def _read_raw(self, data: _NrrdData, zs: range, ys: range, xs: range) -> np.ndarray:
        volume = np.memmap(data.path, dtype=np.dtype(data.dtype), mode="r", offset=data.offset, shape=self.shape)
        return np.array(volume[zs.start : zs.stop, ys.start : ys.stop, xs.start : xs.stop], dtype=self.dtype)

    def _read_gzip(self, data: _NrrdData, zs: range, ys: range, xs: range) -> np.ndarray:
        dtype = np.dtype(data.dtype)
        row_bytes = self.shape[2] * dtype.itemsize
        plane_bytes = self.shape[1] * row_bytes
        out = np.empty((len(zs), len(ys), len(xs)), dtype=self.dtype)
        with open(data.path, "rb") as fh:
            fh.seek(data.offset)
            with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
                position = 0
                for i, z in enumerate(zs):
                    start = z * plane_bytes + ys.start * row_bytes
                    _skip(stream, start - position)
                    rows = _read_exactly(stream, len(ys) * row_bytes)
                    position = start + len(rows)
                    out[i] = np.frombuffer(rows, dtype=dtype).reshape(len(ys), self.shape[2])[:, xs.start : xs.stop]
        return out


def _itk_message(error: Exception) -> str:
    """The useful line of an ITK exception (the rest is a C++ source location): its
    description, else its last line ("Reason: Success" says nothing: the line before)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Description:"):
            return line.removeprefix("Description:").strip()
    useful = [line for line in lines if line not in ("Reason: Success",) and not line.startswith("Exception thrown in SimpleITK")]
    return (useful or lines or [type(error).__name__])[-1]


def _skip(stream: gzip.GzipFile, count: int) -> None:
    while count > 0:
        count -= len(_read_exactly(stream, min(count, _SKIP_CHUNK)))


def _read_exactly(stream: gzip.GzipFile, count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise EOFError(f"compressed data ended early ({len(data)} of {count} bytes)")
    return data


# -- NRRD header ---------------------------------------------------------------


def _nrrd_extent(path: str, fields: dict[str, str], header_end: int) -> tuple[tuple[str, ...], int | None, float | None]:
    """(data files, bytes of voxel data, greatest compression ratio) of a NRRD; bytes
    None where they cannot be told (file lists, unknown encodings)."""
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("datafile")
    if data_file is None:
        files, offset = (path,), header_end
    elif data_file.startswith("LIST") or "%" in data_file or " " in data_file.strip():
        return (path,), None, None  # several data files
    else:
        files, offset = (os.path.join(os.path.dirname(path), data_file),), 0
    if not os.path.isfile(files[0]):
        raise InputError(path, f"data file {files[0]} does not exist")
    ratio = {"raw": 1.0, "gzip": DEFLATE_RATIO, "gz": DEFLATE_RATIO}.get(encoding)
    if ratio is None:  # text, hex, bzip2: no simple bound
        return files, None, None
    return files, max(0, os.path.getsize(files[0]) - offset), ratio


def _metaimage_extent(path: str) -> tuple[tuple[str, ...], int | None, float | None]:
    """(data files, bytes of voxel data, greatest compression ratio) of a MetaImage
    (.mha/.mhd) header; bytes None where they cannot be told (file lists)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        while True:
            line = handle.readline(_HEADER_LINE)
            if not line:
                return (path,), None, None  # no ElementDataFile: ITK will say what is wrong
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":  # the last field; data may follow
                offset = handle.tell()
                break
    data_file = fields["elementdatafile"]
    ratio = DEFLATE_RATIO if fields.get("compresseddata", "false").lower() == "true" else 1.0
    if data_file.upper() == "LOCAL":
        return (path,), max(0, os.path.getsize(path) - offset), ratio
    if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return (path,), None, None
    data_path = os.path.join(os.path.dirname(path), data_file)
    if not os.path.isfile(data_path):
        raise InputError(path, f"data file {data_path} does not exist")
    skip = int(fields.get("headersize", "0") or 0) if fields.get("headersize", "0").lstrip("-").isdigit() else 0
    return (data_path,), max(0, os.path.getsize(data_path) - max(0, skip)), ratio


def _nrrd_header(path: str) -> tuple[dict[str, str], int]:
    """NRRD fields (keys lower case without spaces) and the offset where data starts.

    Read line by line so that the voxels that follow an attached header are never
    loaded.
    """
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        if not fh.readline(_HEADER_LINE).startswith(b"NRRD"):
            raise InputError(path, "not a NRRD file (missing the NRRD magic line)")
        while True:
            line = fh.readline(_HEADER_LINE)
            text = line.decode("latin-1").strip()
            if not text:  # a blank line (or the end of a detached header)
                return fields, fh.tell()
            if text.startswith("#") or ":=" in text or ":" not in text:
                continue  # comments and key/value pairs carry nothing we need
            key, value = text.split(":", 1)
            fields[key.strip().lower().replace(" ", "")] = value.strip()


def _nrrd_unit(fields: dict[str, str], subject: str, notes: list[str]) -> str | None:
    """The unit of NRRD's optional ``space units: "mm" "mm" "mm"``; None (with a note) if not understood."""
    if "spaceunits" not in fields:
        return "millimeter"
    names = [text.strip().lower() for text in fields["spaceunits"].split('"') if text.strip()]
    parsed = {_unit_or_none(name) for name in names}
    if len(parsed) != 1 or None in parsed:
        notes.append(f"{subject}: space units {fields['spaceunits']} not understood; the unit must be given")
        return None
    return parsed.pop()


def _unit_or_none(name: str) -> str | None:
    # plurals ("microns", "millimeters") are common in hand-written headers
    for candidate in (name, name[:-1] if name.endswith("s") else name):
        try:
            return parse_unit(candidate)
        except InputError:
            continue
    return None


def _nrrd_data(
    path: str, fields: dict[str, str], header_end: int, shape: tuple[int, int, int], dtype: np.dtype
) -> _NrrdData | None:
    """Where the voxels are, for the raw/gzip single-file layouts; None for ITK to handle."""
    encoding = fields.get("encoding", "").lower()
    if encoding not in ("raw", "gzip", "gz") or fields.get("dimension") != "3":
        return None
    if int(fields.get("lineskip", "0") or 0) != 0:
        return None
    sizes = tuple(int(s) for s in fields.get("sizes", "").split())
    if sizes != shape[::-1]:
        return None
    data_file = fields.get("datafile")
    if data_file is None:
        data_path, offset = path, header_end
    elif data_file.startswith("LIST") or "%" in data_file:
        return None  # multi-file layouts
    else:
        data_path = os.path.join(os.path.dirname(path), data_file)
        offset = 0
    if not os.path.isfile(data_path):
        raise InputError(path, f"data file {data_path} does not exist")
    order = ">" if fields.get("endian", "little").lower() == "big" else "<"
    file_dtype = dtype.newbyteorder(order).str
    skip = int(fields.get("byteskip", "0") or 0)
    if encoding == "raw":
        nbytes = int(np.prod(shape)) * dtype.itemsize
        size = os.path.getsize(data_path)
        # byte skip -1: the data is the last nbytes of the file
        offset = size - nbytes if skip == -1 else offset + skip
        if offset < 0 or offset + nbytes > size:
            raise InputError(path, f"file is truncated: {size} bytes, the header needs {offset + nbytes}")
        return _NrrdData(data_path, offset, False, file_dtype)
    if skip != 0:
        return None  # a skip inside compressed data: rare, leave it to ITK
    return _NrrdData(data_path, offset, True, file_dtype)
