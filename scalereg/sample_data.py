"""Real brain volumes for tests, examples and benchmarks, fetched from PyPI wheels.

The usual sample-data downloaders (``ants.get_ants_data``, brainglobe atlases,
templateflow, skimage's brain) need the open internet.  A few real brain volumes
ship inside wheels on PyPI, which every machine that can install scalereg can
reach, so they are fetched from there:

* ``mouse``: a whole mouse brain (255 x 217 x 170 uint16 TIFF, about 50 um
  isotropic) from the brainglobe-registration wheel.  The TIFF stores neither
  spacing nor orientation; both are recorded here (see `DATASETS`).
* ``mni152``: the human ICBM 2009a symmetric MNI152 T1 template at 1 mm with its
  grey and white matter probability maps (uint8 NIfTI) from the nilearn wheel.
* ``mni152_nimare``: the MNI152NLin6Asym T1 template at 1 mm and its brain mask
  (NIfTI) from the nimare wheel.

Each wheel is downloaded with ``python -m pip download`` (so pip's own index
configuration, proxies and certificates apply), its sha256 checked against the
pinned value, and only the needed members are unpacked into the cache directory
(``$SCALEREG_DATA``, default ``~/.cache/scalereg/sample-data``).  Every unpacked
file's sha256 is pinned as well.  Files are written under a temporary name,
verified and then renamed, so an interrupted fetch never leaves a file that looks
complete.  Cached files that verify are reused without touching the network; a
cached file that does not verify is deleted and fetched again.

    from scalereg.sample_data import fetch_sample_data
    mouse = fetch_sample_data(["mouse"])["mouse"]
    mouse.path         # <cache>/mouse/sample_3d.tif
    mouse.spacing, mouse.unit, mouse.orientation   # (50.0, 50.0, 50.0), 'micrometer', 'psl'
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from scalereg.errors import InputError

log = logging.getLogger(__name__)

SUBJECT = "sample-data"
ENV_VAR = "SCALEREG_DATA"
DEFAULT_DIR = Path("~/.cache/scalereg/sample-data")
# The main image of a dataset is the member stored under this key.
MAIN = "image"
# pip's own network timeout applies per request; this bounds the whole call.
PIP_TIMEOUT_S = 1800.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelMember:
    """One file inside a wheel, with the sha256 and size of its unpacked bytes."""

    member: str  # path inside the wheel (zip archive)
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SampleDataset:
    """A pinned dataset: which wheel holds it, which members, and their metadata."""

    name: str
    package: str
    version: str
    wheel: str  # file name pip saves
    wheel_sha256: str
    wheel_size: int
    # key -> member; key `MAIN` is the main image, the others become `SampleVolume.extra`.
    members: dict[str, WheelMember]
    spacing: tuple[float, float, float] | None  # z, y, x; None when the file carries it
    unit: str | None
    orientation: str | None  # 3-letter brainglobe code when the file carries none
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class SampleVolume:
    """A fetched dataset: paths in the cache plus the metadata the files lack."""

    name: str
    path: Path  # the main image file in the cache
    extra: dict[str, Path] = field(default_factory=dict)  # e.g. {'gm': ..., 'wm': ...}
    spacing: tuple[float, float, float] | None = None  # z, y, x; None when the file carries it
    unit: str | None = None
    orientation: str | None = None  # 3-letter code when the file carries none
    description: str = ""


_NILEARN_DATA = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_NIMARE_TPL = "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_{}.nii.gz"

DATASETS: dict[str, SampleDataset] = {
    "mouse": SampleDataset(
        name="mouse",
        package="brainglobe-registration",
        version="0.0.6",
        wheel="brainglobe_registration-0.0.6-py3-none-any.whl",
        wheel_sha256="1dc5febd60e74f9332c0ba85eb19da05df536539195c199747a30a6c1ee46e06",
        wheel_size=8_907_312,
        members={
            MAIN: WheelMember(
                "brainglobe_registration/resources/sample_3d.tif",
                "1e011908646310a7b6b5801558fdf04cfefb4d9e86dbd24f943f42ac73b5dbac",
                18_872_558,
            ),
        },
        spacing=(50.0, 50.0, 50.0),
        unit="micrometer",
        # Axis 0 runs posterior -> anterior (cerebellum at index 0, olfactory bulbs
        # at the high end), axis 2 superior -> inferior (dorsal cortex and
        # cerebellar vermis at low indices, brainstem and ventral forebrain at
        # high ones), axis 1 is left/right (the hemispheres mirror about index
        # ~108).  Anatomy cannot tell left from right in a symmetric brain: 'l' is
        # the choice that makes the volume a rotation, not a mirror image, of
        # brainglobe's 'asr' atlases, and brainglobe's own example code ('psl').
        orientation="psl",
        description=(
            "Whole mouse brain, 255 x 217 x 170 uint16 TIFF, about 50 um isotropic "
            "(spacing and orientation are not in the file), from the "
            "brainglobe-registration 0.0.6 wheel (napari '3D mouse brain' sample)."
        ),
    ),
    "mni152": SampleDataset(
        name="mni152",
        package="nilearn",
        version="0.14.1",
        wheel="nilearn-0.14.1-py3-none-any.whl",
        wheel_sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        wheel_size=11_509_444,
        members={
            MAIN: WheelMember(
                _NILEARN_DATA.format("t1"),
                "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
                1_617_531,
            ),
            "gm": WheelMember(
                _NILEARN_DATA.format("gm"),
                "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
                1_965_510,
            ),
            "wm": WheelMember(
                _NILEARN_DATA.format("wm"),
                "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
                1_553_010,
            ),
        },
        spacing=None,
        unit=None,
        orientation=None,
        description=(
            "Human MNI152 ICBM 2009a symmetric T1 template, 197 x 233 x 189 uint8 "
            "NIfTI, 1 mm, RAS, with grey ('gm') and white ('wm') matter probability "
            "maps on the same grid, from the nilearn 0.14.1 wheel."
        ),
    ),
    "mni152_nimare": SampleDataset(
        name="mni152_nimare",
        package="nimare",
        version="0.22.1",
        wheel="nimare-0.22.1-py3-none-any.whl",
        wheel_sha256="16025cbe44c97fb580fe129df230fca62c97c2c6197887abc83b6081552e7bc1",
        wheel_size=15_769_540,
        members={
            MAIN: WheelMember(
                _NIMARE_TPL.format("T1w"),
                "fbb6e77a6b090368db105d1cab2c13abd141815998b85c95a520d09771f0021c",
                10_959_795,
            ),
            "mask": WheelMember(
                _NIMARE_TPL.format("desc-brain_mask"),
                "895cc1e3d13fa00eacf1659bea51a10b384d8bc1d2d751f9a1e131509194c9c9",
                67_910,
            ),
        },
        spacing=None,
        unit=None,
        orientation=None,
        description=(
            "Human MNI152NLin6Asym T1 template, 182 x 218 x 182 int16 NIfTI, 1 mm, "
            "RAS, with its brain mask ('mask'), from the nimare 0.22.1 wheel."
        ),
    ),
}


def sample_data_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$SCALEREG_DATA``, else the default."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return DEFAULT_DIR.expanduser()


def fetch_sample_data(
    names: Sequence[str] | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, SampleVolume]:
    """Fetch (or reuse from the cache) the named datasets; all of them when None.

    Raises `InputError` for an unknown name, a failed download (offline, package
    missing from the registry) and a checksum mismatch.
    """
    if names is None:
        wanted = list(DATASETS)
    else:
        wanted = [names] if isinstance(names, str) else [str(n) for n in names]
    unknown = [n for n in wanted if n not in DATASETS]
    if unknown:
        raise InputError(
            SUBJECT,
            f"unknown dataset {', '.join(repr(n) for n in unknown)}; "
            f"available: {', '.join(DATASETS)}",
        )
    root = sample_data_dir(cache_dir)
    result: dict[str, SampleVolume] = {}
    for name in dict.fromkeys(wanted):  # keep order, drop repeats
        result[name] = _fetch_one(DATASETS[name], root)
    return result


# ----------------------------------------------------------------------------- internals


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_ok(path: Path, member: WheelMember) -> bool:
    """True when ``path`` holds exactly the pinned bytes; a bad file is deleted."""
    if not path.is_file():
        return False
    actual = _sha256_file(path)
    if actual == member.sha256:
        return True
    log.warning(
        "%s: cached %s has sha256 %s, expected %s; deleting it and fetching again",
        SUBJECT, path, actual, member.sha256,
    )
    _unlink(path)
    return False


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(SUBJECT, f"cannot create the cache directory {path}: {exc}") from None


def _fetch_one(ds: SampleDataset, root: Path) -> SampleVolume:
    folder = root / ds.name
    paths = {key: folder / m.filename for key, m in ds.members.items()}
    missing = [key for key, m in ds.members.items() if not _cached_ok(paths[key], m)]
    if missing:
        _mkdir(folder)
        log.info("%s: downloading %s for %r into %s", SUBJECT, ds.requirement, ds.name, folder)
        # The wheel goes to a temporary directory beside the cache (same file
        # system, so the final renames are atomic) and is removed afterwards.
        with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
            wheel = _download_wheel(ds, Path(tmp))
            _extract(ds, wheel, {key: paths[key] for key in missing})
    return SampleVolume(
        name=ds.name,
        path=paths[MAIN],
        extra={key: path for key, path in paths.items() if key != MAIN},
        spacing=ds.spacing,
        unit=ds.unit,
        orientation=ds.orientation,
        description=ds.description,
    )


def _pip_download_command(requirement: str, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-input", "--disable-pip-version-check",
        requirement, "-d", str(dest),
    ]


def _last_line(text: str) -> str:
    """The line of pip's stderr that explains the failure (its last ERROR line)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "no message from pip"


def _download_failed(ds: SampleDataset, why: str) -> InputError:
    return InputError(
        SUBJECT,
        f"could not download {ds.requirement} from the package registry (offline?): {why}",
    )


def _download_wheel(ds: SampleDataset, dest: Path) -> Path:
    command = _pip_download_command(ds.requirement, dest)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        raise _download_failed(ds, f"pip did not finish within {PIP_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise _download_failed(ds, f"could not run pip: {exc}") from None
    if done.returncode != 0:
        raise _download_failed(ds, _last_line(done.stderr))
    wheel = dest / ds.wheel
    if not wheel.is_file():
        found = sorted(p.name for p in dest.glob("*.whl"))
        raise _download_failed(
            ds, f"pip saved {', '.join(found) or 'no wheel'} instead of {ds.wheel}"
        )
    actual = _sha256_file(wheel)
    if actual != ds.wheel_sha256:
        _unlink(wheel)
        raise InputError(
            SUBJECT,
            f"checksum mismatch for {ds.wheel} ({ds.requirement}): sha256 {actual}, "
            f"expected {ds.wheel_sha256}; the file was deleted",
        )
    return wheel


def _extract(ds: SampleDataset, wheel: Path, targets: dict[str, Path]) -> None:
    """Unpack the members ``targets`` names, each via a verified temporary file."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise InputError(SUBJECT, f"{ds.wheel} is not a valid wheel: {exc}") from None
    with archive:
        for key, final in targets.items():
            member = ds.members[key]
            try:
                info = archive.getinfo(member.member)
            except KeyError:
                raise InputError(
                    SUBJECT, f"{ds.wheel} has no member {member.member}"
                ) from None
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{final.name}.", suffix=".part", dir=final.parent
            )
            tmp = Path(tmp_name)
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                actual = digest.hexdigest()
                if actual != member.sha256:
                    raise InputError(
                        SUBJECT,
                        f"checksum mismatch for {final.name} ({member.member} in "
                        f"{ds.wheel}): sha256 {actual}, expected {member.sha256}; "
                        "the file was deleted",
                    )
                os.replace(tmp, final)
            finally:
                _unlink(tmp)
            log.info("%s: wrote %s", SUBJECT, final)


def clear_sample_data(cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Delete the cached datasets this module knows (only their folders)."""
    root = sample_data_dir(cache_dir)
    for name in DATASETS:
        shutil.rmtree(root / name, ignore_errors=True)
