import numpy as np
import pytest

from scalereg.errors import InputError
from scalereg.geometry import Geometry, geometry_from_lps, parse_spacing, parse_unit
from scalereg.orientation import (
    direction_matrix,
    orientation_from_direction,
    orientation_from_rfc4,
    orientation_to_rfc4,
    parse_orientation,
    reorientation,
)


def test_asr_means_anterior_superior_right_origin():
    # index 0 anterior -> increasing toward posterior (+y in LPS), superior -> inferior
    # (-z), right -> left (+x)
    assert direction_matrix("asr").T.tolist() == [[0, 1, 0], [0, 0, -1], [1, 0, 0]]
    assert [o["value"] for o in orientation_to_rfc4("ASR")] == [
        "anterior-to-posterior",
        "superior-to-inferior",
        "right-to-left",
    ]


@pytest.mark.parametrize("code", ["asr", "psl", "ras", "lpi", "ial", "srp"])
def test_rfc4_and_direction_round_trip(code):
    assert orientation_from_rfc4(orientation_to_rfc4(code)) == code
    assert orientation_from_direction(direction_matrix(code)) == (code, 0.0)


@pytest.mark.parametrize("bad", ["", "as", "asrx", "xyz", "aar", "asp", "lrs", 123])
def test_bad_codes_are_refused(bad):
    with pytest.raises(InputError, match="orientation"):
        parse_orientation(bad)


def test_unknown_rfc4_value_is_refused():
    with pytest.raises(InputError, match="not one of"):
        orientation_from_rfc4(["anterior-to-posterior", "up-to-down", "left-to-right"])
    assert orientation_from_rfc4([None, None, None]) is None


def test_oblique_direction_snaps_to_nearest_code_and_reports_angle():
    angle = np.radians(10)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    code, worst = orientation_from_direction(rotation @ direction_matrix("asr"))
    assert code == "asr"
    assert worst == pytest.approx(10, abs=1e-6)
    geometry = geometry_from_lps((1, 1, 1), (0, 0, 0), rotation @ direction_matrix("asr"), "micrometer", "x.nii")
    assert geometry.notes and "oblique" in geometry.notes[0]


def test_reorientation_maps_arrays_between_codes():
    rng = np.random.default_rng(0)
    volume = rng.random((4, 5, 6))
    perm, flips = reorientation("asr", "rsa")  # target axis 0 = source axis 2, etc.
    out = np.flip(np.transpose(volume, perm), axis=[i for i, f in enumerate(flips) if f])
    assert out.shape == (6, 5, 4)
    assert not any(flips)
    perm, flips = reorientation("asr", "psl")
    out = np.flip(np.transpose(volume, perm), axis=[i for i, f in enumerate(flips) if f])
    assert np.array_equal(out, volume[::-1, :, ::-1])


def test_geometry_lps_positions_follow_orientation():
    geometry = Geometry(spacing=(10, 20, 30), origin=(1, 2, 3), orientation="asr")
    # voxel (1, 0, 0) is one step posterior of voxel 0
    p0 = geometry.direction() @ geometry.index_to_physical([0, 0, 0])
    p1 = geometry.direction() @ geometry.index_to_physical([1, 0, 0])
    assert np.allclose(p1 - p0, [0, 10, 0])
    assert np.allclose(geometry.origin_lps(), p0)


def test_geometry_from_lps_round_trips_origin():
    direction = direction_matrix("lip")
    origin_lps = np.array([-5.0, 12.0, 7.5])
    geometry = geometry_from_lps((2, 2, 2), origin_lps, direction, "millimeter", "x")
    assert geometry.orientation == "lip"
    assert np.allclose(geometry.origin_lps(), origin_lps)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -2, 1), (1, float("nan"), 1), (1, 1), ("a", 1, 1)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(InputError, match="spacing"):
        parse_spacing(spacing)


def test_units():
    assert parse_unit("um") == "micrometer"
    assert parse_unit("MM") == "millimeter"
    with pytest.raises(InputError, match="unknown unit"):
        parse_unit("furlong")
