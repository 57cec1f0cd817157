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


def _reference_gaussian(volume, factors, pad):
    """The filter written plainly on the whole array: edge-pad it (np.pad), then per axis
    output ``j`` = sum over taps ``t`` of kernel[t] * padded[factor * j + t], in float64."""
    from scalereg.pyramid.methods.gaussian import folded_kernel

    work = np.pad(volume.astype(np.float64), pad, mode="edge")
    for axis, factor in enumerate(factors):
        if factor == 1:
            continue
        kernel = folded_kernel(factor).astype(np.float64)
        count = (work.shape[axis] - len(kernel) + factor) // factor
        total = 0.0
        for tap, weight in enumerate(kernel):
            index = [slice(None)] * work.ndim
            index[axis] = slice(tap, tap + factor * count, factor)
            total = total + weight * work[tuple(index)]
        work = total
    return work


@pytest.mark.parametrize("slab_bytes", [1, 3000, 1 << 20])
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 2)])
def test_gaussian_equals_the_plain_whole_array_filter(monkeypatch, slab_bytes, factors):
    """Slab by slab, with clamped indices at the boundary, equals the plain filter on the
    edge-padded whole array, for slabs of one plane, a few planes (the last one short)
    and the whole block."""
    from scalereg.pyramid.methods import gaussian
    from scalereg.pyramid.methods.gaussian import downsample_gaussian, gaussian_halo

    monkeypatch.setattr(gaussian, "_SLAB_BYTES", slab_bytes)
    volume = phantom((23, 30, 27), "uint16")
    halo = gaussian_halo(factors)
    pad = [(h, h + (n % f)) if f > 1 else (0, 0) for n, f, h in zip(volume.shape, factors, halo)]  # both edges padded
    result = downsample_gaussian(volume, factors, halo, np.dtype(np.float32), pad)
    expected = _reference_gaussian(volume, factors, pad)
    assert result.shape == expected.shape == tuple(-(-n // f) for n, f in zip(volume.shape, factors))
    assert np.abs(result - expected).max() <= 1e-5 * float(volume.max())  # float32 sums vs float64
    as_uint16 = downsample_gaussian(volume, factors, halo, np.dtype(np.uint16), pad)
    assert as_uint16.dtype == np.uint16 and np.array_equal(as_uint16, np.clip(np.rint(result), 0, 65535).astype(np.uint16))


def _reference_float32_pairs(volume, factors, pad):
    """The filter's exact float32 arithmetic on the edge-padded whole array: per axis
    (first to last), taps summed in symmetric pairs, each pair's sum times its weight,
    accumulated in pair order; the first axis adds the input voxels as float32."""
    from scalereg.pyramid.methods.gaussian import folded_kernel

    work = np.pad(volume, pad, mode="edge")
    for axis, factor in enumerate(factors):
        if factor == 1:
            continue
        kernel = folded_kernel(factor)
        taps = len(kernel)
        count = (work.shape[axis] - taps + factor) // factor

        def tap(t):
            index = [slice(None)] * work.ndim
            index[axis] = slice(t, t + factor * count, factor)
            return work[tuple(index)]

        total = None
        for pair in range(taps // 2):
            term = np.add(tap(pair), tap(taps - 1 - pair), dtype=np.float32) * kernel[pair]
            total = term if total is None else total + term
        if taps % 2:
            total = total + np.multiply(tap(taps // 2), kernel[taps // 2], dtype=np.float32)
        work = total
    return work


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
@pytest.mark.parametrize("slab_bytes", [1, 5000, 1 << 20])
@pytest.mark.parametrize("factors", [(2, 2, 2), (2, 1, 2), (3, 2, 1), (1, 1, 2)])
def test_gaussian_arithmetic_is_fixed_to_the_bit(monkeypatch, dtype, slab_bytes, factors):
    """Bit for bit the float32 sums of the plain filter, however the work is sliced
    (slabs, the first axis's planes cast once, the last axis gathered by phase): the
    same voxels whatever the block layout, and the same as pyramids written before."""
    from scalereg.pyramid.methods import gaussian
    from scalereg.pyramid.methods.gaussian import downsample_gaussian, gaussian_halo

    monkeypatch.setattr(gaussian, "_SLAB_BYTES", slab_bytes)
    volume = phantom((29, 26, 31), "uint16" if dtype == "int16" else dtype)
    if dtype == "int16":  # negative values too
        volume = (volume.astype(np.int32) - 2000).astype(np.int16)
    halo = gaussian_halo(factors)
    for pad in ([(h, h + n % f) for n, f, h in zip(volume.shape, factors, halo)], [(0, 2 * h) for h in halo]):
        result = downsample_gaussian(volume, factors, halo, np.dtype(np.float32), pad)
        expected = _reference_float32_pairs(volume, factors, pad)
        assert result.shape == expected.shape and np.array_equal(result, expected)


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


def test_balanced_batches_deal_every_block_once_largest_first():
    from scalereg.blocks import aligned_blocks, balanced_batches, block_voxels

    blocks = aligned_blocks((1020, 868, 680), (512, 256, 512))  # edge blocks far smaller than the rest
    for count in (1, 3, 8, 100):
        batches = balanced_batches(blocks, count)
        assert sorted(b for batch in batches for b in batch) == sorted(blocks)
        assert len(batches) == min(count, len(blocks))
        loads = [sum(block_voxels(b) for b in batch) for batch in batches]
        assert loads == sorted(loads, reverse=True)
        assert loads[0] - loads[-1] <= max(block_voxels(b) for b in blocks)  # the greedy rule's bound
    # 8 contiguous batches of 2 blocks each would put 2.6x the voxels in one as in another
    eight = [sum(map(block_voxels, batch)) for batch in balanced_batches(blocks, 8)]
    assert max(eight) / min(eight) < 1.6
