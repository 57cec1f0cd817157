"""NIfTI-1/2 volumes (.nii, .nii.gz), read region by region through nibabel's array proxy."""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import os
import zlib
from typing import Iterator

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling

from scalereg.errors import InputError
from scalereg.geometry import geometry_from_lps, parse_unit
from scalereg.io.check_header import DEFLATE_RATIO, check_dtype, check_header
from scalereg.io.source import Region, Source, check_shape
from scalereg.storage import normalize_uri

# What nibabel raises on a damaged file: a short .nii gives ValueError ("not enough
# data in file"), a cut .nii.gz EOFError, a damaged gzip stream zlib.error/OSError.
_CORRUPT = (ImageFileError, HeaderDataError, EOFError, OSError, ValueError, zlib.error)

# NIfTI stores coordinates RAS+; ITK/ANTs (and scalereg) use LPS+.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class NiftiSource(Source):
    """A NIfTI volume as a (z, y, x) = (k, j, i) array.

    Only the header is parsed at open; ``read`` slices nibabel's array proxy so an
    uncompressed file reads just the bytes of the region.  A .nii.gz has no random
    access: every read decompresses from the start of the file up to the region's
    last voxel, so read it in whole z-slabs, in increasing z.

    Values are returned scaled by scl_slope/scl_inter exactly as ``img.dataobj``
    does, so a scaled int16 file reads as float64 (nibabel's choice, not ours).
    """

    def __init__(self, uri: str) -> None:
        self.uri = normalize_uri(uri)
        img = self._load()
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        # (x, y, z, 1) is a 3D volume saved as a single-frame series
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        self._ndim_on_disk = len(img.shape)
        x, y, z = check_shape(shape, self.uri)
        self.shape = (z, y, x)
        # the header's claim, checked against the file before anything is read or allocated
        stored = header.get_data_dtype()
        compressed = self.uri.lower().endswith(".gz")
        data_bytes = os.path.getsize(self.uri) - (0 if compressed else int(img.dataobj.offset))
        check_header(self.uri, self.shape, stored, data_bytes=max(0, data_bytes), compression_ratio=DEFLATE_RATIO if compressed else None)
        self.dtype = _scaled_dtype(img.dataobj)
        check_dtype(self.uri, self.dtype)
        self._check_size(img)

        notes: list[str] = list(self.notes)
        self.unit = _unit(header, self.uri, notes)
        if self.unit is None:
            self.unit_unknown = notes[-1]
        if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
            # nibabel would invent an affine from pixdim; the file states no position
            # or orientation, so report them as unknown and let the user give them.
            zooms = tuple(float(v) for v in header.get_zooms()[:3][::-1])
            self.spacing = zooms if all(v > 0 for v in zooms) else None
            notes.append(f"{self.uri}: neither sform nor qform is set; orientation and origin are unknown")
        else:
            affine = np.asarray(img.affine, dtype=float)
            linear = _RAS_TO_LPS @ affine[:3, :3]
            geometry = geometry_from_lps(
                spacing=np.linalg.norm(affine[:3, :3], axis=0)[::-1],
                origin_lps=_RAS_TO_LPS @ affine[:3, 3],
                direction_lps=linear[:, ::-1],
                unit=self.unit or "millimeter",  # the numbers; an unknown unit must be given (unit_unknown)
                subject=self.uri,
            )
            self.spacing = geometry.spacing
            self.origin = geometry.origin
            self.orientation = geometry.orientation
            notes.extend(geometry.notes)
        self.notes = tuple(notes)
        self._img: nib.Nifti1Image | None = img

    def _load(self) -> nib.Nifti1Image:
        try:
            with _header_fixes() as fixes:
                image = nib.load(self.uri)
            self.notes = tuple(f"{self.uri}: {fix}" for fix in fixes)  # nibabel's repairs of the header, said
            return image
        except FileNotFoundError:
            raise InputError(self.uri, "no such file or directory") from None
        except _CORRUPT as error:
            raise InputError(self.uri, f"not a readable NIfTI file: {error}") from None
        except TypeError as error:  # a voxel type numpy cannot make (RGB, structured)
            raise InputError(self.uri, f"voxel type not supported ({error}); scalereg needs one real value per voxel") from None

    def _check_size(self, img: nib.Nifti1Image) -> None:
        """Fail at open, not halfway through a conversion, when a .nii is short."""
        proxy = img.dataobj
        needed = int(proxy.offset) + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
        if self.uri.lower().endswith(".gz"):
            _check_gzip_size(self.uri, needed)
            return
        actual = os.path.getsize(self.uri)
        if actual < needed:
            raise InputError(self.uri, f"file is truncated: {actual} bytes, the header needs {needed}")

    def read(self, region: Region) -> np.ndarray:
        zs, ys, xs = region
        # nibabel indexes (i, j, k) = (x, y, z); extra singleton axes are dropped
        index = (xs, ys, zs) + (0,) * (self._ndim_on_disk - 3)
        try:
            block = self._image().dataobj[index]
        except _CORRUPT as error:
            raise InputError(self.uri, f"file is truncated or corrupt: {error}") from None
        return np.ascontiguousarray(np.transpose(block, (2, 1, 0)), dtype=self.dtype)

    def _image(self) -> nib.Nifti1Image:
        if self._img is None:
            stat = os.stat(self.uri)
            self._img = _shared_image(self.uri, stat.st_mtime_ns, stat.st_size)
        return self._img

    def close(self) -> None:
        self._img = None

    def __getstate__(self) -> dict:
        # the image re-parses its header on first use after unpickling
        return {**self.__dict__, "_img": None}


@contextlib.contextmanager
def _header_fixes() -> Iterator[list[str]]:
    """What nibabel says of a header it repairs as it loads ('qform_code 99 not valid;
    setting to 0'), collected instead of printed: nibabel writes it to stderr itself."""
    logger = logging.getLogger("nibabel.global")
    fixes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fixes.append(" ".join(record.getMessage().split()))

    handlers, logger.handlers = logger.handlers, [Collect()]
    try:
        yield fixes
    finally:
        logger.handlers = handlers


@functools.lru_cache(maxsize=4)
def _shared_image(uri: str, mtime_ns: int, size: int) -> nib.Nifti1Image:
    """One open image per file and process, shared by the blocks a worker reads.

    For .nii.gz this keeps indexed_gzip's seek index between blocks: without it every
    block would decompress the file from its start again.  (mtime and size are part
    of the key so that a changed file is opened anew.)
    """
    try:
        with _header_fixes():  # said once, when the source was opened
            return nib.load(uri, keep_file_open=True)
    except _CORRUPT as error:
        raise InputError(uri, f"not a readable NIfTI file: {error}") from None


def _check_gzip_size(path: str, needed: int) -> None:
    """Catch a cut .nii.gz at open without decompressing it.

    A gzip stream ends with its uncompressed size mod 2**32 (ISIZE).  When that does
    not match what the header needs, the file is cut or holds several gzip members
    (bgzip, concatenation); only then is the stream decompressed to tell which.
    """
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() < 18:
            raise InputError(path, "file is truncated: too short to be gzip")
        handle.seek(-4, os.SEEK_END)
        isize = int.from_bytes(handle.read(4), "little")
    if isize == needed % 2**32:
        return
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(path, f"file is truncated or corrupt: {error}") from None
    if total < needed:
        raise InputError(path, f"file is truncated: {total} bytes uncompressed, the header needs {needed}")


def _scaled_dtype(proxy: nib.arrayproxy.ArrayProxy) -> np.dtype:
    """The dtype ``proxy[...]`` returns, computed the way ArrayProxy._get_scaled does.

    It depends only on the stored dtype and the scale factors, never on the data, so
    it is found with an empty array instead of a read.
    """
    slope = np.asanyarray(proxy.slope)
    inter = np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    # native byte order: a big-endian file should not leak '>i2' into the pipeline
    return apply_read_scaling(np.zeros(1, dtype=proxy.dtype), slope, inter).dtype.newbyteorder("=")


def _unit(header: nib.Nifti1Header, subject: str, notes: list[str]) -> str | None:
    """Space unit from xyzt_units; NIfTI's convention is millimetres when unset.  None
    (with a note saying why) for a code that is no NIfTI space unit."""
    try:
        unit, _ = header.get_xyzt_units()
    except KeyError:  # a code nibabel does not know
        unit = f"code {int(header['xyzt_units']) & 7}"
    if unit in ("unknown", None):
        return "millimeter"
    try:
        return parse_unit(unit, subject)
    except InputError:
        notes.append(f"{subject}: the header's space unit ({unit}, xyzt_units {int(header['xyzt_units'])}) is not a NIfTI space unit")
        return None
