import numpy as np
import pytest
import zarr

from conftest import label_phantom, phantom
from scalereg.blocks import aligned_blocks, grow_block
from scalereg.omezarr.pyramid_layout import level_translation
from scalereg.pyramid.downsample_block import downsample_block
from scalereg.pyramid.level_schedule import level_schedule
from scalereg.pyramid.methods.gaussian import gaussian_sigma


def test_schedule_waits_for_fine_axes_on_anisotropic_data():
    # 4 x 1 x 1 um lightsheet: z is not halved until y and x reach 4 um
    factors = level_schedule((400, 2000, 2000), (4.0, 1.0, 1.0), min_size=32)
    assert factors[:4] == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    spacing = np.array([4.0, 1.0, 1.0])
    for f in factors:
        spacing = spacing * f
        assert spacing.max() / spacing.min() <= 4.0


def test_schedule_stops_at_minimum_size():
    factors = level_schedule((255, 217, 170), (50, 50, 50), min_size=32)
    assert factors == [(2, 2, 2), (2, 2, 2)]  # 170 -> 85 -> 43 -> (22 < 32: stop)
    assert level_schedule((20, 20, 20), (1, 1, 1), min_size=32) == []
    assert len(level_schedule((4096,) * 3, (1, 1, 1), min_size=8, max_levels=3)) == 2


def test_gaussian_sigma_gives_fwhm_of_the_factor():
    # Gaussian variance + box(2) variance = (FWHM 2 voxels / 2.3548)^2 - (1 / 2.3548)^2
    total = gaussian_sigma(2) ** 2 + 0.25
    assert total == pytest.approx((4 - 1) / (8 * np.log(2)))


def _downsample(volume, factors, method, block_shape, out_shape=None):
    source = zarr.create_array(store={}, shape=volume.shape, chunks=(16, 16, 16), dtype=volume.dtype)
    source[:] = volume
    out_shape = out_shape or tuple(-(-n // f) for n, f in zip(volume.shape, factors))
    target = zarr.create_array(store={}, shape=out_shape, chunks=(8, 8, 8), dtype=volume.dtype)
    for block in aligned_blocks(out_shape, block_shape):
        downsample_block(source, target, block, factors, method)
    return target[:]


@pytest.mark.parametrize("block_shape", [(8, 8, 8), (8, 16, 24), (40, 40, 40)])
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2)])
def test_blockwise_result_equals_whole_volume_result(block_shape, factors):
    volume = phantom((37, 45, 51), "uint16")  # odd sizes: last output voxels are edge-padded
    whole = _downsample(volume, factors, "gaussian", (64, 64, 64))
    blockwise = _downsample(volume, factors, "gaussian", block_shape)
    assert np.array_equal(whole, blockwise)
    assert whole.dtype == np.uint16


def test_gaussian_keeps_linear_ramps_at_voxel_centres():
    """A linear function of physical position, downsampled, must equal the function
    evaluated at the level's voxel centres: this checks both the filter's symmetry and
    the translation that level_translation writes into the metadata."""
    spacing0, origin0 = np.array([3.0, 2.0, 1.0]), np.array([5.0, -7.0, 11.0])
    shape = (40, 48, 56)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    coefficients = np.array([0.5, -0.25, 0.75])
    volume = ((origin0 + idx * spacing0) @ coefficients).astype(np.float32)
    total = np.array([1, 1, 1])
    current = volume
    for factors in [(2, 2, 2), (1, 2, 2), (2, 2, 2)]:
        current = _downsample(current, factors, "gaussian", (16, 16, 16))
        total = total * factors
        translation = np.array(level_translation(origin0, spacing0, total))
        out_idx = np.stack(np.meshgrid(*[np.arange(n) for n in current.shape], indexing="ij"), axis=-1)
        expected = (translation + out_idx * spacing0 * total) @ coefficients
        interior = tuple(slice(3, -3) for _ in range(3))
        assert np.allclose(current[interior], expected[interior], atol=1e-3)


def test_gaussian_removes_aliasing():
    # a checkerboard at the Nyquist frequency must not survive as a pattern
    z, y, x = np.indices((32, 32, 32))
    volume = (((z + y + x) % 2) * 1000).astype(np.float32)
    out = _downsample(volume, (2, 2, 2), "gaussian", (16, 16, 16))
    assert out.std() < 1.0 and abs(out.mean() - 500) < 1.0


def test_mode_keeps_the_label_set_and_is_blockwise_exact():
    labels = label_phantom((33, 41, 47))
    whole = _downsample(labels, (2, 2, 2), "mode", (64, 64, 64))
    blockwise = _downsample(labels, (2, 2, 2), "mode", (8, 16, 8))
    assert np.array_equal(whole, blockwise)
    assert set(np.unique(whole)) <= set(np.unique(labels))
    assert set(np.unique(whole)) == set(np.unique(labels))  # regions are large enough to survive
    # a group with a clear majority keeps it
    tiny = np.zeros((2, 2, 2), dtype=np.uint16)
    tiny[0, :, :] = 9
    tiny[1, 0, 0] = 9
    assert _downsample(tiny, (2, 2, 2), "mode", (1, 1, 1))[0, 0, 0] == 9


def test_mode_ties_go_to_the_smallest_label():
    tie = np.zeros((2, 2, 2), dtype=np.uint8)
    tie[0] = 5
    tie[1] = 3
    assert _downsample(tie, (2, 2, 2), "mode", (1, 1, 1))[0, 0, 0] == 3


def test_grow_block_respects_budget_and_units():
    shape = (500, 600, 700)
    block = grow_block(shape, (64, 64, 64), bytes_per_voxel=10, budget_bytes=100 * 2**20)
    assert all(b % 64 == 0 for b in block)
    assert np.prod(block) * 10 <= 100 * 2**20
    assert block[2] >= block[1] >= block[0]  # x grows first (C order)
    blocks = aligned_blocks(shape, block)
    covered = np.zeros(shape, dtype=np.uint8)
    for b in blocks:
        covered[tuple(slice(a, c) for a, c in b)] += 1
    assert covered.min() == 1 and covered.max() == 1
