"""Volume readers: region reads, spatial metadata and bad input, on small phantoms.

Every phantom is written to tmp_path by the format's own library (nibabel,
SimpleITK, tifffile, zarr), and the truth (voxels, LPS positions) comes from that
library too, so that the readers are checked against an independent reading of
the same file.
"""

from __future__ import annotations

import gzip
import pickle
import sys
import types
from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import zarr

from scalereg.errors import InputError
from scalereg.geometry import Geometry
from scalereg.io import open_source
from scalereg.io.itk_source import ItkSource
from scalereg.io.nifti_source import NiftiSource
from scalereg.io.source import Source, full_region
from scalereg.io.tiff_source import TiffSource
from scalereg.io.zarr_source import ZarrArraySource

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def distinct_volume(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Distinct values everywhere, so that a transposed or shifted read cannot pass."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) % np.iinfo(np.int16).max
    return values.reshape(shape).astype(dtype)


def regions(shape: tuple[int, int, int]) -> list[tuple[slice, slice, slice]]:
    z, y, x = shape
    return [
        full_region(shape),
        (slice(0, 1), slice(0, 1), slice(0, 1)),  # first voxel
        (slice(z - 1, z), slice(y - 1, y), slice(x - 1, x)),  # last voxel
        (slice(1, z - 1), slice(2, y), slice(0, x - 2)),  # interior, touching edges
        (slice(z - 2, z), slice(0, y), slice(x - 3, x)),  # far corner slab
        (slice(2, 3), slice(0, y), slice(0, x)),  # one full plane
    ]


def assert_reads(source: Source, truth: np.ndarray) -> None:
    assert source.shape == truth.shape
    for region in regions(source.shape):
        block = source.read(region)
        assert block.dtype == source.dtype, region
        np.testing.assert_array_equal(block, truth[region], err_msg=str(region))


def assert_pickles(source: Source, truth: np.ndarray) -> None:
    clone = pickle.loads(pickle.dumps(source))
    region = regions(source.shape)[3]
    np.testing.assert_array_equal(clone.read(region), truth[region])


def lps_from_source(source: Source, index_zyx: tuple[int, int, int]) -> np.ndarray:
    """LPS position of a voxel as scalereg sees it: direction @ (origin + index * spacing)."""
    geometry = Geometry(
        spacing=source.spacing, origin=source.origin, unit=source.unit, orientation=source.orientation
    )
    return geometry.direction() @ geometry.index_to_physical(np.asarray(index_zyx))


# -- NIfTI -----------------------------------------------------------------------

# i -> inferior (index 0 superior: 's'), j -> left ('r'), k -> anterior ('p');
# our axes (z, y, x) = (k, j, i) so the code is 'prs', spacing (3, 1.5, 2).
PERMUTED_AFFINE = np.array(
    [
        [0.0, -1.5, 0.0, 10.0],
        [0.0, 0.0, 3.0, -20.0],
        [-2.0, 0.0, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_nifti(path: Path, data_ijk: np.ndarray, affine: np.ndarray, **header: object) -> Path:
    img = nib.Nifti1Image(data_ijk, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_reads_regions_in_zyx_order(tmp_path: Path, suffix: str) -> None:
    data = distinct_volume((7, 9, 11), "int16")  # (i, j, k)
    path = write_nifti(tmp_path / f"brain{suffix}", data, PERMUTED_AFFINE)
    source = NiftiSource(str(path))
    truth = data.transpose(2, 1, 0)
    assert source.shape == (11, 9, 7)
    assert source.dtype == np.int16
    assert_reads(source, truth)
    assert_pickles(source, truth)


def test_nifti_geometry_matches_the_affine(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "brain.nii.gz", distinct_volume((7, 9, 11), "int16"), PERMUTED_AFFINE)
    source = NiftiSource(str(path))
    assert source.orientation == "prs"
    assert source.spacing == pytest.approx((3.0, 1.5, 2.0))
    assert source.unit == "millimeter"
    assert source.notes == ()
    affine = nib.load(path).affine
    for i, j, k in [(0, 0, 0), (6, 0, 0), (0, 8, 0), (0, 0, 10), (3, 4, 5), (6, 8, 10)]:
        expected = RAS_TO_LPS @ (affine @ [i, j, k, 1])[:3]
        np.testing.assert_allclose(lps_from_source(source, (k, j, i)), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("affine", "code"),
    [
        # identity: i -> Right, j -> Anterior, k -> Superior, so index 0 of
        # (z, y, x) = (k, j, i) lies inferior, posterior, left
        (np.eye(4), "ipl"),
        # i runs right->left (RAS -x), j superior->inferior (-z), k anterior->posterior (-y)
        (np.array([[-1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]]), "asr"),
    ],
)
def test_nifti_orientation_code_worked_by_hand(tmp_path: Path, affine: np.ndarray, code: str) -> None:
    path = write_nifti(tmp_path / "brain.nii", distinct_volume((4, 5, 6), "uint8"), affine)
    assert NiftiSource(str(path)).orientation == code


def test_nifti_scaling_is_applied_like_nibabel(tmp_path: Path) -> None:
    data = distinct_volume((5, 6, 7), "int16")
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.5, -1.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, path)
    source = NiftiSource(str(path))
    expected = np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    assert source.dtype == expected.dtype  # float64: nibabel's choice for int16 * python float
    np.testing.assert_allclose(expected, data.transpose(2, 1, 0) * 2.5 - 1.0)
    assert_reads(source, expected)


def test_nifti_big_endian_reads_native(tmp_path: Path) -> None:
    data = distinct_volume((5, 6, 7), ">i2")
    path = write_nifti(tmp_path / "be.nii", data, np.eye(4))
    source = NiftiSource(str(path))
    assert source.dtype == np.dtype("int16") and source.dtype.isnative
    assert_reads(source, data.astype("int16").transpose(2, 1, 0))


@pytest.mark.parametrize(
    ("units", "expected"), [("micron", "micrometer"), ("mm", "millimeter"), ("unknown", "millimeter")]
)
def test_nifti_unit(tmp_path: Path, units: str, expected: str) -> None:
    img = nib.Nifti1Image(distinct_volume((4, 5, 6)), np.eye(4))
    img.header.set_xyzt_units(units)
    nib.save(img, tmp_path / "u.nii")
    assert NiftiSource(str(tmp_path / "u.nii")).unit == expected


def test_nifti_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    data = distinct_volume((4, 5, 6, 1))
    path = write_nifti(tmp_path / "t1.nii.gz", data, np.eye(4))
    source = NiftiSource(str(path))
    assert source.shape == (6, 5, 4)
    assert_reads(source, data[..., 0].transpose(2, 1, 0))


@pytest.mark.parametrize("shape", [(4, 5, 6, 2), (4, 5)])
def test_nifti_not_3d_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = write_nifti(tmp_path / "bad.nii", distinct_volume(shape), np.eye(4))
    with pytest.raises(InputError, match="expected a 3D volume") as error:
        NiftiSource(str(path))
    assert str(path) in str(error.value)


def test_nifti_oblique_affine_is_snapped_with_a_note(tmp_path: Path) -> None:
    angle = np.radians(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    path = write_nifti(tmp_path / "oblique.nii", distinct_volume((4, 5, 6)), affine)
    source = NiftiSource(str(path))
    assert source.orientation == "ipl"
    assert len(source.notes) == 1 and "oblique" in source.notes[0] and str(path) in source.notes[0]


def test_nifti_without_sform_or_qform_has_unknown_orientation(tmp_path: Path) -> None:
    img = nib.Nifti1Image(distinct_volume((4, 5, 6)), None)
    img.header.set_zooms((0.5, 0.6, 0.7))
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, tmp_path / "bare.nii")
    source = NiftiSource(str(tmp_path / "bare.nii"))
    assert source.orientation is None and source.origin is None
    assert source.spacing == pytest.approx((0.7, 0.6, 0.5))
    assert any("neither sform nor qform" in note for note in source.notes)


def truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_nifti_truncated_raw_fails_at_open(tmp_path: Path) -> None:
    path = truncate(write_nifti(tmp_path / "cut.nii", distinct_volume((20, 20, 20)), np.eye(4)), 0.5)
    with pytest.raises(InputError, match="truncated") as error:
        NiftiSource(str(path))
    assert str(path) in str(error.value)


def test_nifti_truncated_gzip_fails_at_open(tmp_path: Path) -> None:
    # the gzip trailer (uncompressed size) is gone, so the cut shows before any data is read
    path = truncate(write_nifti(tmp_path / "cut.nii.gz", distinct_volume((20, 20, 20)), np.eye(4)), 0.5)
    with pytest.raises(InputError, match="truncated") as error:
        NiftiSource(str(path))
    assert str(path) in str(error.value)


def test_nifti_multi_member_gzip_is_not_mistaken_for_truncated(tmp_path: Path) -> None:
    import gzip

    volume = distinct_volume((20, 20, 20))
    plain = write_nifti(tmp_path / "whole.nii", volume, np.eye(4))
    raw = plain.read_bytes()
    path = tmp_path / "members.nii.gz"
    # two gzip members (as bgzip or concatenation write): the trailer holds only the last one's size
    path.write_bytes(gzip.compress(raw[: len(raw) // 3]) + gzip.compress(raw[len(raw) // 3 :]))
    source = NiftiSource(str(path))
    np.testing.assert_array_equal(source.read(full_region(source.shape)), volume.transpose(2, 1, 0))


@pytest.mark.parametrize("name", ["junk.nii", "junk.nii.gz"])
def test_nifti_garbage_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a nifti file" * 10)
    with pytest.raises(InputError) as error:
        NiftiSource(str(path))
    assert str(path) in str(error.value)


# -- NRRD / MetaImage --------------------------------------------------------------

# row-major ITK direction: columns are the LPS directions of index axes x, y, z
ITK_DIRECTION = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def itk_phantom(dtype: str = "int16") -> tuple[sitk.Image, np.ndarray]:
    truth = distinct_volume((6, 7, 8), dtype)  # (z, y, x)
    image = sitk.GetImageFromArray(truth)
    image.SetSpacing((0.5, 0.7, 1.1))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(ITK_DIRECTION)
    return image, truth


ITK_FILES = [
    ("brain.nrrd", False),
    ("brain.nrrd", True),
    ("brain.nhdr", False),
    ("brain.nhdr", True),
    ("brain.mha", False),
    ("brain.mha", True),
    ("brain.mhd", False),
]


@pytest.mark.parametrize(("name", "compress"), ITK_FILES)
def test_itk_reads_regions(tmp_path: Path, name: str, compress: bool) -> None:
    image, truth = itk_phantom()
    path = tmp_path / name
    sitk.WriteImage(image, str(path), compress)
    source = ItkSource(str(path))
    assert source.dtype == np.int16
    assert source.notes == ()
    if name.endswith((".nrrd", ".nhdr")):
        assert source._nrrd is not None  # read directly, not whole-volume through ITK
    assert_reads(source, truth)
    assert_pickles(source, truth)


@pytest.mark.parametrize(("name", "compress"), ITK_FILES)
def test_itk_geometry_matches_simpleitk(tmp_path: Path, name: str, compress: bool) -> None:
    image, _ = itk_phantom()
    path = tmp_path / name
    sitk.WriteImage(image, str(path), compress)
    source = ItkSource(str(path))
    # x -> anterior (index 0 posterior 'p'), y -> inferior ('s'), z -> left ('r')
    assert source.orientation == "rsp"
    assert source.spacing == pytest.approx((1.1, 0.7, 0.5))
    assert source.unit == "millimeter"
    written = sitk.ReadImage(str(path))
    for x, y, z in [(0, 0, 0), (7, 0, 0), (0, 6, 0), (0, 0, 5), (3, 2, 4), (7, 6, 5)]:
        expected = written.TransformIndexToPhysicalPoint((x, y, z))
        np.testing.assert_allclose(lps_from_source(source, (z, y, x)), expected, atol=1e-9)


def test_itk_identity_direction_is_iar(tmp_path: Path) -> None:
    # LPS identity: x -> left (index 0 right), y -> posterior (0 anterior), z -> superior (0 inferior)
    sitk.WriteImage(sitk.GetImageFromArray(distinct_volume((3, 4, 5))), str(tmp_path / "id.mha"))
    assert ItkSource(str(tmp_path / "id.mha")).orientation == "iar"


def write_nrrd(path: Path, truth: np.ndarray, fields: dict[str, str], data: bytes | None = None) -> Path:
    """A hand-written attached NRRD (fields SimpleITK does not write)."""
    z, y, x = truth.shape
    header = {
        "type": "int16",
        "dimension": "3",
        "space": "left-posterior-superior",
        "sizes": f"{x} {y} {z}",
        "space directions": "(1,0,0) (0,1,0) (0,0,1)",
        "endian": "little",
        "encoding": "raw",
        "space origin": "(0,0,0)",
        **fields,
    }
    text = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in header.items()) + "\n"
    path.write_bytes(text.encode() + (data if data is not None else truth.astype("<i2").tobytes()))
    return path


def test_nrrd_big_endian(tmp_path: Path) -> None:
    truth = distinct_volume((4, 5, 6), "int16")
    path = write_nrrd(tmp_path / "be.nrrd", truth, {"endian": "big"}, truth.astype(">i2").tobytes())
    source = ItkSource(str(path))
    assert source.dtype.isnative
    assert_reads(source, truth)


@pytest.mark.parametrize(
    ("units", "expected"), [('"microns" "microns" "microns"', "micrometer"), ('"mm" "mm" "mm"', "millimeter")]
)
def test_nrrd_space_units_are_honoured(tmp_path: Path, units: str, expected: str) -> None:
    path = write_nrrd(tmp_path / "u.nrrd", distinct_volume((4, 5, 6), "int16"), {"space units": units})
    assert ItkSource(str(path)).unit == expected


def test_nrrd_unknown_space_units_leave_the_unit_to_the_user(tmp_path: Path) -> None:
    path = write_nrrd(tmp_path / "u.nrrd", distinct_volume((4, 5, 6), "int16"), {"space units": '"furlong" "mm" "mm"'})
    source = ItkSource(str(path))
    assert source.unit is None
    assert any("space units" in note for note in source.notes)


def test_nrrd_other_encodings_fall_back_to_itk_with_a_note(tmp_path: Path) -> None:
    truth = distinct_volume((4, 5, 6), "int16")
    text = " ".join(str(v) for v in truth.ravel()).encode()
    path = write_nrrd(tmp_path / "ascii.nrrd", truth, {"encoding": "ascii"}, text)
    source = ItkSource(str(path))
    assert source._nrrd is None
    assert any("read whole by ITK" in note for note in source.notes)
    assert_reads(source, truth)
    assert_pickles(source, truth)


def test_itk_multi_component_is_refused(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="3 components") as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)


def test_itk_2d_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.uint8)), str(path))
    with pytest.raises(InputError, match="expected a 3D volume") as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["junk.nrrd", "junk.mha"])
def test_itk_garbage_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(InputError) as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)


def test_nrrd_truncated_raw_fails_at_open(tmp_path: Path) -> None:
    image, _ = itk_phantom()
    path = tmp_path / "cut.nrrd"
    sitk.WriteImage(image, str(path))
    truncate(path, 0.7)
    with pytest.raises(InputError, match="truncated") as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["cut.nrrd", "cut.mha"])
def test_itk_truncated_compressed_fails_when_read(tmp_path: Path, name: str) -> None:
    truth = distinct_volume((30, 30, 30), "int16")
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(truth), str(path), True)
    truncate(path, 0.6)
    with pytest.raises(InputError, match="truncated or corrupt") as error:
        ItkSource(str(path)).read(full_region(truth.shape))
    assert str(path) in str(error.value)


def test_nhdr_missing_data_file_is_refused(tmp_path: Path) -> None:
    image, _ = itk_phantom()
    path = tmp_path / "detached.nhdr"
    sitk.WriteImage(image, str(path))
    (tmp_path / "detached.raw").unlink()
    with pytest.raises(InputError) as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)


# -- TIFF ----------------------------------------------------------------------------

TIFF_STACKS = {
    "contiguous": {},
    "zlib": {"compression": "zlib"},
    "tiled": {"compression": "zlib", "tile": (16, 16)},
    "big-endian": {"byteorder": ">"},
    "imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
    "ome": {"ome": True, "metadata": {"axes": "ZYX"}},
}


@pytest.mark.parametrize("kind", sorted(TIFF_STACKS))
def test_tiff_stack_reads_regions(tmp_path: Path, kind: str) -> None:
    truth = distinct_volume((6, 33, 40))
    path = tmp_path / f"stack-{kind}.tif"
    tifffile.imwrite(path, truth, **TIFF_STACKS[kind])
    source = TiffSource(str(path))
    assert source.dtype == np.uint16 and source.dtype.isnative
    assert (source.spacing, source.origin, source.unit, source.orientation) == (None, None, None, None)
    assert source.preferred_block is None
    assert_reads(source, truth)
    assert_pickles(source, truth)


def test_tiff_pages_written_one_by_one(tmp_path: Path) -> None:
    # data interleaved with IFDs (as libtiff writers do): no contiguous block, each page raw
    truth = distinct_volume((5, 20, 30))
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in truth:
            tif.write(plane, contiguous=False, metadata=None)
    source = TiffSource(str(path))
    assert source._contiguous is None
    assert_reads(source, truth)


def write_slices(folder: Path, truth: np.ndarray, **kwargs: object) -> list[Path]:
    folder.mkdir(exist_ok=True)
    # unpadded numbers: lexical order would put slice_10 before slice_2
    paths = [folder / f"slice_{z}.tif" for z in range(len(truth))]
    for path, plane in zip(paths, truth):
        tifffile.imwrite(path, plane, **kwargs)
    return paths


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_slice_directory_in_natural_order(tmp_path: Path, compression: str | None) -> None:
    truth = distinct_volume((12, 17, 23))
    write_slices(tmp_path / "slices", truth, compression=compression)
    (tmp_path / "slices" / "._slice_3.tif").write_bytes(b"macOS resource fork")
    (tmp_path / "slices" / "notes.txt").write_text("ignored")
    source = TiffSource(str(tmp_path / "slices"))
    assert source.shape == (12, 17, 23)
    assert_reads(source, truth)
    assert_pickles(source, truth)


def test_tiff_glob_pattern(tmp_path: Path) -> None:
    truth = distinct_volume((11, 8, 9))
    write_slices(tmp_path / "slices", truth)
    source = open_source(str(tmp_path / "slices" / "slice_*.tif"))
    assert isinstance(source, TiffSource)
    assert_reads(source, truth)


def test_tiff_glob_matching_nothing(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing_*.tif")
    with pytest.raises(InputError, match="no .tif/.tiff files match") as error:
        TiffSource(pattern)
    assert pattern in str(error.value)


@pytest.mark.parametrize("odd", [np.zeros((8, 10), np.uint16), np.zeros((8, 9), np.uint8)])
def test_tiff_slices_that_differ_are_refused(tmp_path: Path, odd: np.ndarray) -> None:
    paths = write_slices(tmp_path / "slices", distinct_volume((4, 8, 9)))
    tifffile.imwrite(paths[2], odd)
    with pytest.raises(InputError, match="slices differ") as error:
        TiffSource(str(tmp_path / "slices"))
    assert str(paths[2]) in str(error.value)


def test_tiff_rgb_slice_is_refused(tmp_path: Path) -> None:
    paths = write_slices(tmp_path / "slices", distinct_volume((3, 8, 9)))
    tifffile.imwrite(paths[1], np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB") as error:
        TiffSource(str(tmp_path / "slices"))
    assert str(paths[1]) in str(error.value)


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (np.zeros((4, 8, 9, 3), np.uint8), {"photometric": "rgb"}, "RGB"),
        (np.zeros((4, 2, 8, 9), np.uint16), {"imagej": True, "metadata": {"axes": "ZCYX"}}, "channels"),
        (np.zeros((8, 9), np.uint16), {}, "expected a 3D volume"),
    ],
)
def test_tiff_stack_that_is_not_one_channel_3d_is_refused(tmp_path: Path, data, kwargs, message: str) -> None:
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, **kwargs)
    with pytest.raises(InputError, match=message) as error:
        TiffSource(str(path))
    assert str(path) in str(error.value)


def test_tiff_pages_of_different_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((8, 9), np.uint16), metadata=None)
        tif.write(np.zeros((7, 9), np.uint16), metadata=None)
    with pytest.raises(InputError, match="different shapes") as error:
        TiffSource(str(path))
    assert str(path) in str(error.value)


def test_tiff_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 40)
    with pytest.raises(InputError) as error:
        TiffSource(str(path))
    assert str(path) in str(error.value)


def test_tiff_truncated_contiguous_stack_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, distinct_volume((6, 30, 40)))
    truncate(path, 0.6)
    with pytest.raises(InputError, match="truncated") as error:
        TiffSource(str(path))
    assert str(path) in str(error.value)


def test_tiff_truncated_compressed_slice_fails_when_read(tmp_path: Path) -> None:
    truth = distinct_volume((3, 40, 50))
    paths = write_slices(tmp_path / "slices", truth, compression="zlib")
    data = paths[2].read_bytes()
    # keep the tags (tifffile writes them first) but destroy the compressed strip
    with tifffile.TiffFile(paths[2]) as tif:
        start = tif.pages.first.dataoffsets[0]
        count = tif.pages.first.databytecounts[0]
    paths[2].write_bytes(data[:start] + b"\x00" * count + data[start + count :])
    source = TiffSource(str(tmp_path / "slices"))
    np.testing.assert_array_equal(source.read((slice(0, 2), slice(0, 40), slice(0, 50))), truth[:2])
    with pytest.raises(InputError, match="truncated or corrupt") as error:
        source.read(full_region(source.shape))
    assert str(paths[2]) in str(error.value)


# -- Zarr ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        {"zarr_format": 2, "chunks": (2, 3, 4)},
        {"zarr_format": 3, "chunks": (2, 3, 4)},
        {"zarr_format": 3, "chunks": (2, 3, 4), "shards": (4, 6, 8)},
    ],
)
def test_zarr_array_reads_regions(tmp_path: Path, layout: dict) -> None:
    truth = distinct_volume((7, 10, 13), "float32")
    array = zarr.create_array(tmp_path / "a.zarr", shape=truth.shape, dtype=truth.dtype, **layout)
    array[:] = truth
    source = open_source(str(tmp_path / "a.zarr"))
    assert isinstance(source, ZarrArraySource)
    assert source.preferred_block == (2, 3, 4)
    assert source.dtype == np.float32
    assert (source.spacing, source.origin, source.unit, source.orientation) == (None, None, None, None)
    assert_reads(source, truth)
    assert_pickles(source, truth)


def test_zarr_2d_array_is_refused(tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "flat.zarr", shape=(4, 5), dtype="u1")
    with pytest.raises(InputError, match="expected a 3D volume") as error:
        ZarrArraySource(str(tmp_path / "flat.zarr"))
    assert str(tmp_path / "flat.zarr") in str(error.value)


def test_zarr_remote_url_with_storage_options(tmp_path: Path) -> None:
    # fsspec's in-memory filesystem stands in for a bucket: same URL path as s3://
    truth = distinct_volume((4, 5, 6))
    url = f"memory://bucket/{tmp_path.name}/a.zarr"
    array = zarr.create_array(url, shape=truth.shape, dtype=truth.dtype, chunks=(2, 5, 6))
    array[:] = truth
    source = open_source(url, storage_options={})
    assert isinstance(source, ZarrArraySource) and source.uri == url
    assert_reads(source, truth)


# -- open_source ------------------------------------------------------------------------


def test_open_source_dispatches_by_extension(tmp_path: Path) -> None:
    # not (4, ...): tifffile writes a leading axis of 3 or 4 as colour samples
    volume = distinct_volume((5, 6, 7), "int16")
    write_nifti(tmp_path / "a.nii", volume, np.eye(4))
    write_nifti(tmp_path / "a.nii.gz", volume, np.eye(4))
    tifffile.imwrite(tmp_path / "a.tiff", volume)
    tifffile.imwrite(tmp_path / "b[1].TIF", volume)  # an existing name is not a glob pattern
    for name in ("a.nrrd", "a.mha", "a.mhd"):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / name))
    (tmp_path / "a.mha").rename(tmp_path / "b.MHA")  # extensions are case-insensitive
    write_slices(tmp_path / "slices", volume)
    expected = {
        "a.nii": NiftiSource,
        "a.nii.gz": NiftiSource,
        "a.tiff": TiffSource,
        "b[1].TIF": TiffSource,
        "a.nrrd": ItkSource,
        "b.MHA": ItkSource,
        "a.mhd": ItkSource,
        "slices": TiffSource,
    }
    for name, kind in expected.items():
        assert type(open_source(str(tmp_path / name))) is kind, name
    assert type(open_source(f"file://{tmp_path / 'a.nii'}")) is NiftiSource


@pytest.fixture
def fake_ome_source(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stands in for the OME-Zarr reader, which has its own tests: records its calls."""
    calls: list = []

    class FakeOmeZarrSource:
        def __init__(self, uri: str, storage_options: dict | None = None) -> None:
            calls.append((uri, storage_options))

    module = types.ModuleType("scalereg.io.ome_zarr_source")
    module.OmeZarrSource = FakeOmeZarrSource  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "scalereg.io.ome_zarr_source", module)
    return calls


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_source_finds_ome_zarr(tmp_path: Path, fake_ome_source: list, zarr_format: int) -> None:
    group = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=zarr_format)
    multiscales = [{"axes": [], "datasets": [{"path": "0"}]}]
    group.attrs.update({"multiscales": multiscales} if zarr_format == 2 else {"ome": {"multiscales": multiscales}})
    open_source(str(tmp_path / "img.ome.zarr"))
    assert fake_ome_source == [(str(tmp_path / "img.ome.zarr"), None)]


def test_open_source_refuses_a_plain_zarr_group(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    with pytest.raises(InputError, match="without OME") as error:
        open_source(str(tmp_path / "g.zarr"))
    assert str(tmp_path / "g.zarr") in str(error.value)


def test_open_source_missing_path(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match="no such file or directory") as error:
        open_source(path)
    assert path in str(error.value)


@pytest.mark.parametrize("name", ["volume.xyz", "empty-dir"])
def test_open_source_unknown_format_lists_the_supported_ones(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "empty-dir":
        path.mkdir()
    else:
        path.write_text("?")
    with pytest.raises(InputError, match="supported formats: NIfTI") as error:
        open_source(str(path))
    assert str(path) in str(error.value) and "MetaImage" in str(error.value)


def test_open_source_remote_file_is_read_through_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SCALEREG_CACHE_DIR", str(tmp_path / "cache"))
    url = "memory://bucket/brain.nii.gz"
    fsspec.filesystem("memory").pipe("/bucket/brain.nii.gz", gzip.compress(b"not really"))
    with pytest.raises(InputError) as error:
        open_source(url)
    assert str(error.value).startswith(url)  # the object is named, not the local copy
    with pytest.raises(InputError, match="no such object"):
        open_source("memory://bucket/missing.zarr")


def test_nrrd_without_space_has_unknown_orientation(tmp_path: Path) -> None:
    truth = distinct_volume((4, 5, 6), "int16")
    path = tmp_path / "bare.nrrd"
    header = "NRRD0004\ntype: int16\ndimension: 3\nsizes: 6 5 4\nspacings: 0.5 0.6 0.7\n"
    header += "endian: little\nencoding: raw\n\n"
    path.write_bytes(header.encode() + truth.tobytes())
    source = ItkSource(str(path))
    assert source.orientation is None and source.origin is None
    assert source.spacing == pytest.approx((0.7, 0.6, 0.5))
    assert any("no 'space'" in note for note in source.notes)
    assert_reads(source, truth)


def test_itk_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    truth = distinct_volume((1, 4, 5, 6))  # (t, z, y, x): ITK size (6, 5, 4, 1)
    path = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.GetImageFromArray(truth, isVector=False), str(path))
    source = ItkSource(str(path))
    assert source.shape == (4, 5, 6)
    assert_reads(source, truth[0])


def test_itk_true_4d_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t2.mha"
    sitk.WriteImage(sitk.GetImageFromArray(distinct_volume((2, 4, 5, 6)), isVector=False), str(path))
    with pytest.raises(InputError, match="expected a 3D volume") as error:
        ItkSource(str(path))
    assert str(path) in str(error.value)
