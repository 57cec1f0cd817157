"""Shared fixtures: synthetic phantoms and a real Prefect server for integration tests."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Prefect's console log handler binds sys.stderr when Prefect is first imported.  Import
# it now, under pytest's session-wide capture: first imported inside a test that
# captures with capsys, it would keep writing to that test's stream after it closed, and
# a later capsys test would find "--- Logging error ---" in its stderr.
import prefect.main  # noqa: E402, F401


def phantom(shape: tuple[int, int, int], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """A brain-like test volume: smooth blobs over a dark background, deterministic."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    volume = np.zeros(shape, dtype=np.float64)
    for _ in range(6):
        centre = rng.uniform(-0.5, 0.5, size=3)
        radius = rng.uniform(0.2, 0.5)
        volume += np.exp(-np.sum((grid - centre) ** 2, axis=-1) / (2 * radius**2))
    volume += 0.05 * rng.standard_normal(shape)
    if np.issubdtype(np.dtype(dtype), np.integer):
        top = min(np.iinfo(dtype).max, 4000)
        return np.clip(volume / volume.max() * top, 0, top).astype(dtype)
    return volume.astype(dtype)


def write_bad_sources(root) -> dict:
    """Source files that conversion must refuse (and a good TIFF and NIfTI to compare
    with), written under ``root``; keyed by file name."""
    import nibabel as nib
    import tifffile

    volume = phantom((20, 24, 28), "uint16")
    paths = {name: root / name for name in ("stack.tif", "brain.nii.gz", "truncated.nii.gz", "garbage.nii", "flat.tif", "4d.nii.gz", "slices")}
    tifffile.imwrite(paths["stack.tif"], volume)
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.05, 0.05, 0.05, 1])), paths["brain.nii.gz"])
    whole = paths["brain.nii.gz"].read_bytes()
    paths["truncated.nii.gz"].write_bytes(whole[: len(whole) // 2])
    paths["garbage.nii"].write_bytes(b"this is not a nifti file" * 20)
    tifffile.imwrite(paths["flat.tif"], volume[0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.uint8), np.eye(4)), paths["4d.nii.gz"])
    paths["slices"].mkdir()
    tifffile.imwrite(paths["slices"] / "z_0.tif", volume[0])
    tifffile.imwrite(paths["slices"] / "z_1.tif", volume[1, :10])  # slices of different shapes
    return paths


def label_phantom(shape: tuple[int, int, int], labels: int = 5, seed: int = 1) -> np.ndarray:
    """Nested label regions with values that are not contiguous (0, 7, 14, ...)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    out = np.zeros(shape, dtype=np.uint16)
    for value in range(1, labels):
        centre = rng.uniform(-0.4, 0.4, size=3)
        inside = np.sum((grid - centre) ** 2, axis=-1) < rng.uniform(0.05, 0.3)
        out[inside] = value * 7
    return out


def session_processes(session: int, of: Any = os.getsid) -> list[int]:
    """The pids of every process whose session (or, with ``of=os.getpgid``, process
    group) is ``session``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if of(int(entry)) == session:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def parent_of(pid: int) -> int | None:
    """The parent process of ``pid`` (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def command_session(process) -> int | None:
    """The session of the command a `scalereg` process runs: the CLI runs flow commands
    in a child process in a session of its own (`scalereg.cli._supervise`)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_of(int(entry)) == process.pid:
            try:
                return os.getsid(int(entry))
            except OSError:
                continue
    return None


def kill_command(process, timeout: float = 30.0) -> None:
    """SIGKILL a `scalereg` command as a user kills it (its process group), and wait until
    every process of the run it supervised (flow, workers, server) is gone with it."""
    import signal
    import time

    session = command_session(process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while session is not None and session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_processes(session) if session is not None else []
    assert not left, f"processes of the killed command still running: {left}"


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (API + database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_volumes(tmp_path_factory):
    """The real brains from registry packages (downloaded once per cache)."""
    from scalereg.sample_data import fetch_sample_data

    return fetch_sample_data(["mouse", "mni152"])


@pytest.fixture(scope="session")
def mouse_pyramid(sample_volumes, tmp_path_factory):
    """The sample mouse brain (50 um, psl) as an OME-Zarr pyramid: 50, 100, 200 um."""
    from scalereg.convert import convert_volume

    mouse = sample_volumes["mouse"]
    out = tmp_path_factory.mktemp("mouse") / "mouse.ome.zarr"
    convert_volume(str(mouse.path), str(out), spacing=mouse.spacing, unit=mouse.unit, orientation=mouse.orientation, chunks=64)
    return out


QUICK_MOUSE_SCHEDULE = {
    "name": "test-mouse",
    "steps": [
        {"spacing": 200, "transform": "rigid", "iterations": [300, 100], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 200, "transform": "affine", "iterations": [300, 100], "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]},
        {"spacing": 100, "transform": "syn", "metric": "mattes", "iterations": [30, 10], "shrink_factors": [2, 1],
         "smoothing_sigmas": [1, 0], "gradient_step": 0.25},
    ],
}  # fmt: skip


@pytest.fixture(scope="session")
def mouse_registration(mouse_pyramid, tmp_path_factory):
    """The sample mouse (fixed), a copy moved by a known affine and warp (moving), and
    the transform directory of registering the copy back (a real, quick registration)."""
    import zarr

    from scalereg.convert import convert_volume
    from scalereg.omezarr import read_pyramid
    from scalereg.register import register_pyramids
    from scalereg.register.ants_image import to_ants_image
    from scalereg.synthetic import deform, make_deformation

    tmp = tmp_path_factory.mktemp("mouse-registration")
    layout = read_pyramid(str(mouse_pyramid))
    volume = zarr.open_array(str(mouse_pyramid / "0"))[:]
    truth = make_deformation(to_ants_image(volume, layout.geometry), tmp / "truth", rotation_degrees=5, shift_um=200, warp_um=100)
    zarr.save_array(str(tmp / "moved.zarr"), deform(volume, layout.geometry, truth))
    moving = tmp / "moved.ome.zarr"
    geometry = layout.geometry
    convert_volume(str(tmp / "moved.zarr"), str(moving), spacing=geometry.spacing, unit=geometry.unit, origin=geometry.origin, orientation=geometry.orientation, chunks=64)
    transform = tmp / "transform"
    manifest = register_pyramids(str(mouse_pyramid), str(moving), str(transform), schedule=QUICK_MOUSE_SCHEDULE)
    return {"tmp": tmp, "fixed": mouse_pyramid, "moving": moving, "transform": transform, "manifest": manifest, "truth": truth}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint on loopback (moto_server subprocess, signatures and IAM checked)."""
    from s3_server import start_s3_server, stop_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto_server.log")
    yield server
    stop_s3_server(server)


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """This process (and Dask workers it starts) reach the bucket as the 'writer' user,
    through the environment only, as a deployment would; the object cache is private."""
    import s3fs

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SCALEREG_CACHE_DIR", str(tmp_path / "object-cache"))
    # s3fs keeps one filesystem per set of options and credentials come from the
    # environment, not the options: forget filesystems made under other credentials
    forget_s3_filesystems()
    yield s3_server
    forget_s3_filesystems()


def forget_s3_filesystems() -> None:
    """Drop s3fs's cached filesystems, closing their HTTP sessions first: dropped
    open, aiohttp reported each as an "Unclosed client session" when the test process
    ended.  A filesystem zarr opened (asynchronous) lives on zarr's event loop, the
    others on fsspec's."""
    import s3fs
    from fsspec.asyn import sync
    from zarr.core.sync import sync as zarr_sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        session = getattr(fs, "_s3creator", None)
        if session is None:
            continue
        if fs.asynchronous:
            zarr_sync(session.__aexit__(None, None, None))
        elif fs.loop is not None and fs.loop.is_running():
            sync(fs.loop, session.__aexit__, None, None, None, timeout=10)
        fs._s3creator = fs._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()
