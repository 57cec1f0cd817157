"""The catalogue of bad inputs (issues 8 and 20), listed for users in docs/bad-inputs.md.

Each case is one bad input to one command -- convert, register, warp or run (the
register-brain flow) -- given the three ways a user can give it:

- the CLI (`scalereg.cli.main`): exit code 2 and exactly one line on stderr,
  ``scalereg: error: ...``, naming the input, no traceback;
- Python (the command's flow called with ``return_state=True``): the flow run ends
  Failed with that message (``BadInput``; a value the flow's parameter models refuse
  fails Prefect's parameter validation instead, naming the parameter);
- a deployment (a flow run created on the Prefect server from a deployment that
  enforces its parameter schema, then run here as a worker runs it): the server
  refuses the parameters before any run exists, or the run ends Failed with the
  message;

and after each of the three, no output is marked complete (no pyramid whose status is
``complete``, no transform directory with its ``manifest.json``, no ``report.md``), every
file that was in the inputs' folder and the output's folder before is there unchanged
(checksums), and no new file is anywhere but at the output; for the cases with a URL
that holds credentials, the secret is in none of the bytes the run printed or wrote
(messages, log files, outputs, Prefect's database with its logs, artifacts and flow
runs).  Commands that run no flow (transform-points, validate, info) have their cases
in `test_bad_input_without_a_flow`, the CLI way and from Python.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import zarr

from conftest import forget_s3_filesystems, phantom, write_bad_sources
from scalereg.cli import main
from scalereg.errors import BAD_INPUT_STATE
from scalereg.omezarr import validate_pyramid

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SPACING = [100.0, 100.0, 100.0]  # micrometers, for the pyramids and the run's TIFFs
TINY_SCHEDULE = {
    "name": "tiny",
    "steps": [{"spacing": 200, "transform": "rigid", "iterations": [20], "shrink_factors": [1], "smoothing_sigmas": [0]}],
}


# ----------------------------------------------------------------------------- inputs


def _blobs(shape: tuple[int, int, int], centres: list[tuple[int, int, int]], radius: float = 5.0) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    volume = np.zeros(shape, np.uint16)
    for centre in centres:
        volume[np.sum((grid - np.asarray(centre)) ** 2, axis=-1) < radius**2] = 1000
    return volume


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Every bad (and the few good) inputs the cases refer to by name."""
    from scalereg.convert import convert_volume
    from scalereg.omezarr.create_pyramid_store import STATUS_KEY

    root = tmp_path_factory.mktemp("bad-inputs")
    paths: dict[str, Path] = {"root": root}
    paths.update(write_bad_sources(root))
    paths["raw.zarr"] = root / "raw.zarr"
    zarr.save_array(str(paths["raw.zarr"]), phantom((32, 32, 32), "uint16"))
    for name, value in (("nan.zarr", np.nan), ("inf.zarr", np.inf)):
        bad = phantom((32, 32, 32), "float32")
        bad[25, 3, 4] = value  # in the last blocks: found mid-run, after others were written
        paths[name] = root / name
        zarr.create_array(str(paths[name]), data=bad, chunks=(16, 16, 16))
    paths["float.zarr"] = root / "float.zarr"
    zarr.save_array(str(paths["float.zarr"]), phantom((32, 32, 32), "float32"))
    paths["existing"] = root / "existing"  # something else already at the output path
    paths["existing"].mkdir()
    (paths["existing"] / "notes.txt").write_text("not scalereg's")

    # pyramids (100 um, asr; 48, 24, 12 voxels)
    def pyramid(name: str, array: np.ndarray, **options: Any) -> None:
        paths[name] = root / name
        source = root / f"{name}.src.zarr"
        zarr.save_array(str(source), array)
        convert_volume(str(source), str(paths[name]), spacing=SPACING, unit="micrometer", chunks=16, min_size=8, **{"orientation": "asr", **options})

    cube = phantom((48, 48, 48), "uint16")
    pyramid("fixed.ome.zarr", cube)
    pyramid("moving.ome.zarr", np.roll(cube, (2, -2, 1), axis=(0, 1, 2)))
    pyramid("far.ome.zarr", cube, origin=(1e6, 1e6, 1e6))  # a metre away: nowhere near the reference
    pyramid("zeros.ome.zarr", np.zeros((48, 48, 48), np.uint16))
    pyramid("float.ome.zarr", phantom((48, 48, 48), "float32"))
    pyramid("centre.ome.zarr", _blobs((48, 48, 48), [(24, 24, 24)]))
    # two blobs in opposite corners: their centre of mass, onto which the fixed blob is
    # aligned first, lies in the empty middle
    pyramid("corners.ome.zarr", _blobs((48, 48, 48), [(8, 8, 8), (40, 40, 40)]))
    pyramid("incomplete.ome.zarr", cube)
    group = zarr.open_group(str(paths["incomplete.ome.zarr"]), mode="r+")
    group.attrs[STATUS_KEY] = {**group.attrs[STATUS_KEY], "status": "incomplete"}  # an interrupted conversion

    _hostile_inputs(root, paths)
    paths["tiny.json"] = root / "tiny.json"
    paths["tiny.json"].write_text(json.dumps(TINY_SCHEDULE))
    paths["bspline.json"] = root / "bspline.json"
    paths["bspline.json"].write_text(json.dumps({"steps": [{**TINY_SCHEDULE["steps"][0], "transform": "bspline"}]}))
    import ants

    paths["identity.mat"] = root / "identity.mat"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(paths["identity.mat"]))
    paths["garbage.mat"] = root / "garbage.mat"
    paths["garbage.mat"].write_bytes(b"#Insight Transform File V1.0\nnot a transform\n" * 4)
    _transform_directories(root, paths)
    try:
        _mounts(root, paths)
        yield {name: str(path) for name, path in paths.items()}
    finally:
        while _MOUNTED:
            subprocess.run(["umount", "-l", str(_MOUNTED.pop())], check=False)


SECRET = "catalogue-secret-7d1f0e9b"  # in the URLs of the credential cases: never printed, never written
URL_KEY = "AKIACATALOGUEKEY"


def _hostile_inputs(root: Path, paths: dict[str, Path]) -> None:
    """Inputs of issue 20's cases: headers that lie, types scalereg cannot hold, hostile
    OME-Zarr metadata and schedules, folders an output could swallow."""
    import nibabel as nib

    volume = phantom((20, 24, 28), "uint16").transpose(2, 1, 0)
    affine = np.diag([0.05, 0.05, 0.05, 1])

    def nifti(name: str, data: np.ndarray, matrix: np.ndarray = affine, units: int | None = None) -> None:
        image = nib.Nifti1Image(data, matrix)
        if units is not None:
            image.header["xyzt_units"] = units
        paths[name] = root / name
        nib.save(image, paths[name])

    nifti("complex.nii.gz", volume.astype(np.complex64))
    nifti("rgb.nii.gz", np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))
    nifti("unitcode.nii.gz", volume, units=7)  # 7: no NIfTI space unit
    shifted = affine.copy()
    shifted[0, 3] = np.nan
    nifti("nanorigin.nii.gz", volume, shifted)
    nifti("implausible.nii.gz", volume, np.diag([1e30, 1e30, 1e30, 1]))
    paths["bool.zarr"] = root / "bool.zarr"
    zarr.save_array(str(paths["bool.zarr"]), phantom((16, 16, 16), "uint16") > 1000)
    # headers that claim a petabyte in a few bytes
    paths["huge.mha"] = root / "huge.mha"
    paths["huge.mha"].write_text("ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_USHORT\n"
                                 "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n" + "x" * 100)  # fmt: skip
    paths["huge.nrrd"] = root / "huge.nrrd"
    paths["huge.nrrd"].write_bytes(b"NRRD0004\ntype: uint16\ndimension: 3\nsizes: 100000 100000 100000\nendian: little\nencoding: gzip\n\n" + gzip.compress(b"\0" * 1000))
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.uint16)
    paths["huge.nii.gz"] = root / "huge.nii.gz"
    paths["huge.nii.gz"].write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1000))
    # a chunk of a Zarr source that no longer decodes
    paths["corrupt-chunk.zarr"] = root / "corrupt-chunk.zarr"
    zarr.create_array(str(paths["corrupt-chunk.zarr"]), data=phantom((32, 32, 32), "uint16"), chunks=(16, 16, 16))
    (paths["corrupt-chunk.zarr"] / "c" / "1" / "1" / "1").write_bytes(b"not what zstd wrote")
    # incompressible voxels, more than a small disk holds
    paths["noise.zarr"] = root / "noise.zarr"
    zarr.create_array(str(paths["noise.zarr"]), data=np.random.default_rng(0).integers(0, 65535, (192, 256, 256), dtype=np.uint16), chunks=(64, 128, 128))
    # schedules: an infinite spacing, a billion laughs
    paths["inf-schedule.json"] = root / "inf-schedule.json"
    paths["inf-schedule.json"].write_text('{"steps": [{"spacing": Infinity, "transform": "rigid", "iterations": [10], "shrink_factors": [1], "smoothing_sigmas": [0]}]}')
    laughs = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    paths["bomb-schedule.yaml"] = root / "bomb-schedule.yaml"
    paths["bomb-schedule.yaml"].write_text("\n".join(laughs) + "\nsteps: *i\n")
    # folders and files an output must not swallow or replace
    paths["inbox"] = root / "inbox"
    paths["inbox"].mkdir()
    shutil.copy(paths["brain.nii.gz"], paths["inbox"] / "brain.nii.gz")
    paths["inbox-link"] = root / "inbox-link"
    paths["inbox-link"].symlink_to(paths["inbox"], target_is_directory=True)
    paths["regular-file"] = root / "regular-file"
    paths["regular-file"].write_text("a file, not a folder")
    paths["busy.ome.zarr"] = root / "busy.ome.zarr"  # an output another run is writing (its lock held by the case)


def _hostile_pyramids(root: Path, paths: dict[str, Path]) -> None:
    """Copies of the good pyramid whose metadata lies: a level path that leaves the
    image, a level that is the group itself, a zero scale, attributes that are no object."""
    def edit(name: str, change: Callable[[dict], None], raw: str | None = None) -> None:
        paths[name] = root / name
        shutil.copytree(paths["fixed.ome.zarr"], paths[name])
        metadata = paths[name] / "zarr.json"
        if raw is not None:
            metadata.write_text(raw)
            return
        document = json.loads(metadata.read_text())
        change(document["attributes"]["ome"]["multiscales"][0])
        metadata.write_text(json.dumps(document))

    edit("dotdot.ome.zarr", lambda m: m["datasets"][0].__setitem__("path", "../moving.ome.zarr/0"))
    edit("grouppath.ome.zarr", lambda m: m["datasets"][0].__setitem__("path", ""))
    edit("zeroscale.ome.zarr", lambda m: m["datasets"][0]["coordinateTransformations"][0].__setitem__("scale", [0.0, 0.0, 0.0]))
    edit("nonobject.ome.zarr", lambda m: None, raw=json.dumps({"zarr_format": 3, "node_type": "group", "attributes": [1, 2, 3]}))
    paths["shelf"] = root / "shelf"  # a folder of pyramids an output could swallow
    paths["shelf"].mkdir()
    for name in ("fixed.ome.zarr", "moving.ome.zarr"):
        shutil.copytree(paths[name], paths["shelf"] / name)


def _transform_directories(root: Path, paths: dict[str, Path]) -> None:
    """A real transform directory of fixed and moving, and copies of it that were changed
    after the registration: its affine rewritten, a manifest that is no object, a chain
    entry without its kind."""
    import ants

    from scalereg.register import register_pyramids

    _hostile_pyramids(root, paths)
    paths["transform"] = root / "transform"
    register_pyramids(str(paths["fixed.ome.zarr"]), str(paths["moving.ome.zarr"]), str(paths["transform"]), schedule=TINY_SCHEDULE)
    for name in ("tampered-transform", "list-manifest-transform", "kindless-transform"):
        paths[name] = root / name
        shutil.copytree(paths["transform"], paths[name])
    moved = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=np.eye(3), offset=(300.0, 0.0, 0.0))
    ants.write_transform(moved, str(paths["tampered-transform"] / "forward" / "affine.mat"))
    (paths["list-manifest-transform"] / "manifest.json").write_text("[1, 2, 3]")
    manifest = json.loads((paths["kindless-transform"] / "manifest.json").read_text())
    del manifest["outputs"]["chains"]["forward"][0]["kind"]
    (paths["kindless-transform"] / "manifest.json").write_text(json.dumps(manifest))


def _mounts(root: Path, paths: dict[str, Path]) -> None:
    """Outputs' places that cannot take them: a read-only filesystem, a full one, and
    one too small for what will be written (tmpfs mounts: the test runs as root, as CI
    and the README's test command do)."""
    for name, options in (("readonly", "ro,size=1m"), ("full", "size=1m"), ("small-disk", "size=20m")):
        paths[name] = root / name
        paths[name].mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(paths[name])], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"cannot mount a tmpfs for the {name} cases (run the tests as root, as the README's test command does): {done.stderr.strip()}")
        _MOUNTED.append(paths[name])
    with open(paths["full"] / "filler", "wb") as handle:
        with contextlib.suppress(OSError):
            handle.write(b"\0" * (2 << 20))  # until the disk is full


_MOUNTED: list[Path] = []


# ------------------------------------------------------------------ commands as specs
# A spec builds, for one output path and cluster, the CLI arguments and the flow
# parameters of the same command with the same inputs.

Build = Callable[[dict[str, str], str, str], tuple[list[str], dict[str, Any]]]


def _path(data: dict[str, str], name: str) -> str:
    """A named input of `data`, or NAME/rest under a named input, or the text itself."""
    head, _, rest = name.partition("/")
    if head not in data:
        return name
    return os.path.join(data[head], rest) if rest else data[head]


def convert(source: str, output: str | None = None, spacing: list[float] | None = None, **options: Any) -> Build:
    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        src, target = _path(data, source), _path(data, output) if output else out
        argv = ["convert", src, target, "--chunks", "16", "--cluster", cluster]
        parameters: dict[str, Any] = {"source": src, "output": target, "chunks": 16, "cluster": cluster}
        if spacing is not None:
            argv += ["--spacing", *map(str, spacing)]
            parameters["spacing"] = spacing
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
            parameters[name] = value
        return argv, parameters

    return build


def register(
    fixed: str = "fixed.ome.zarr", moving: str = "moving.ome.zarr", output: str | None = None, schedule: str = "tiny.json",
    memory_budget: str | None = None, overwrite: bool = False,
) -> Build:  # fmt: skip
    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        target = _path(data, output) if output else out
        f, m, s = _path(data, fixed), _path(data, moving), _path(data, schedule)
        argv = ["register", "--fixed", f, "--moving", m, "--out", target, "--schedule", s]
        parameters: dict[str, Any] = {"fixed": f, "moving": m, "out": target, "schedule": s, "cluster": cluster}
        if memory_budget:
            argv += ["--memory-budget", memory_budget]
            parameters["memory_budget"] = memory_budget
        if overwrite:
            argv.append("--overwrite")
            parameters["overwrite"] = True
        return argv, parameters

    return build


def warp(
    transform: str = "identity.mat", moving: str = "moving.ome.zarr", reference: str = "fixed.ome.zarr", output: str | None = None,
    interpolation: str = "linear", overwrite: bool = False,
) -> Build:  # fmt: skip
    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        target = _path(data, output) if output else out
        t, m, r = _path(data, transform), _path(data, moving), _path(data, reference)
        argv = ["warp", "--transform", t, "--moving", m, "--reference", r, "--out", target, "--interpolation", interpolation, "--cluster", cluster]
        parameters = {"transform": [t], "moving": m, "reference": r, "output": target, "interpolation": interpolation, "cluster": cluster}
        if overwrite:
            argv.append("--overwrite")
            parameters["overwrite"] = True
        return argv, parameters

    return build


def run(fixed: dict[str, Any], moving: dict[str, Any] | None = None, schedule: str = "tiny.json", output: str | None = None, overwrite: bool = False) -> Build:
    """register-brain; images as {"uri": name, "spacing": ..., "orientation": ...}."""
    moving = moving or {"uri": "stack.tif", "spacing": SPACING, "orientation": "asr"}

    def build(data: dict[str, str], given_out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        out = _path(data, output) if output else given_out
        images = {role: {**image, "uri": _path(data, image["uri"])} for role, image in (("fixed", fixed), ("moving", moving))}
        argv = ["run", "--out", out, "--schedule", _path(data, schedule), "--chunks", "16", "--cluster", cluster] + (["--overwrite"] if overwrite else [])
        for role, image in images.items():
            argv += [f"--{role}", image["uri"]]
            if "spacing" in image:
                argv += [f"--{role}-spacing", *map(str, image["spacing"])]
            for key in ("unit", "orientation"):
                if key in image:
                    argv += [f"--{role}-{key}", image[key]]
        parameters = {**images, "out": out, "registration": {"schedule": _path(data, schedule)}, "chunks": 16, "cluster": cluster}
        if overwrite:
            parameters["overwrite"] = True
        return argv, parameters

    return build


# ---------------------------------------------------------------------- environment


def output_roots(name: str) -> Callable[[pytest.MonkeyPatch, dict[str, str]], None]:
    """Outputs confined to ROOT/name, which no case writes to."""

    def setup(monkeypatch: pytest.MonkeyPatch, data: dict[str, str]) -> None:
        monkeypatch.setenv("SCALEREG_OUTPUT_ROOTS", os.path.join(data["root"], name))

    return setup


def unreachable_store(monkeypatch: pytest.MonkeyPatch, data: dict[str, str]) -> None:
    """S3 at a loopback port nobody listens on.  One attempt per request (test_s3 covers
    the retries that make a real run wait about 10 s before giving up)."""
    import s3fs

    import scalereg.storage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: connections are refused
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "catalogue", "AWS_SECRET_ACCESS_KEY": "catalogue", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(scalereg.storage, "S3_CLIENT_CONFIG", {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1, "mode": "standard"}})
    forget_s3_filesystems()
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    if os.environ.get("SCALEREG_OUTPUT_ROOTS"):  # a deployment's worker that may write to the bucket
        monkeypatch.setenv("SCALEREG_OUTPUT_ROOTS", os.environ["SCALEREG_OUTPUT_ROOTS"] + ",s3://lab/outputs")


# ---------------------------------------------------------------------------- cases

OUTPUT = "<the output path>"


@dataclass(frozen=True)
class Case:
    kind: str  # what the issue calls it
    build: Build
    expect: str  # a regular expression the message matches (case-insensitive)
    names: str  # the input the message names (OUTPUT: the output path given)
    # how a deployment takes it: "refused" (by the parameter schema, before a run
    # exists) or "failed" (the run ends Failed with the message)
    deployment: str = "failed"
    # prepares the environment of each leg; may return what undoes it after the case
    setup: Callable[[pytest.MonkeyPatch, dict[str, str]], Callable[[], None] | None] | None = None
    # how a Python call takes it, when not as a deployment: "failed" (BadInput) or
    # "refused" (the flow's parameter models refuse the value)
    python: str | None = None
    secret: bool = False  # a URL with credentials: the secret must be in nothing printed or written

    @property
    def command(self) -> str:
        return self.build.__qualname__.split(".")[0]

    @property
    def python_way(self) -> str:
        return self.python or self.deployment


CASES: dict[str, Case] = {
    # ---- convert
    "convert-corrupt-file": Case("corrupt file", convert("garbage.nii"), "garbage.nii", "garbage.nii"),
    "convert-truncated-file": Case("truncated file", convert("truncated.nii.gz"), "truncated", "truncated.nii.gz"),
    "convert-2d-input": Case("2D input", convert("flat.tif", spacing=[1.0, 1.0, 1.0]), "3D", "flat.tif"),
    "convert-4d-input": Case("4D input", convert("4d.nii.gz"), "3D", "4d.nii.gz"),
    "convert-nan-voxels": Case("NaN voxels (found while writing)", convert("nan.zarr", spacing=[1.0, 1.0, 1.0]), "NaN/Inf voxels", "nan.zarr"),
    "convert-zero-spacing": Case("zero spacing", convert("stack.tif", spacing=[0.0, 1.0, 1.0]), "positive|greater than 0|minimum of 0", "spacing", deployment="refused"),
    "convert-unknown-unit": Case("unknown unit", convert("brain.nii.gz", unit="parsec"), "parsec", "unit", deployment="refused"),
    "convert-unknown-orientation": Case("unknown orientation code", convert("brain.nii.gz", orientation="xyz"), "xyz", "orientation", deployment="refused"),
    "convert-float-labels": Case("label image with float values", convert("float.zarr", spacing=[1.0, 1.0, 1.0], labels=True), "integer type", "float.zarr"),
    "convert-memory-budget-too-small": Case("memory budget too small", convert("brain.nii.gz", memory_budget="1KiB"), "too small", "memory-budget"),
    "convert-output-inside-input": Case("output inside the input", convert("raw.zarr", output="raw.zarr/out.ome.zarr", spacing=[1.0, 1.0, 1.0]), "inside the input", OUTPUT),
    "convert-missing-file": Case("missing file", convert("root/missing.nii.gz"), "no such file", "missing.nii.gz"),
    "convert-existing-output": Case("existing output without overwrite", convert("brain.nii.gz", output="existing"), "already exists", OUTPUT),
    "convert-glob-matches-nothing": Case("glob matching nothing", convert("slices/nothing_*.tif", spacing=[1.0, 1.0, 1.0]), "match", "nothing_"),
    "convert-slices-differ": Case("slices of different shapes", convert("slices", spacing=[1.0, 1.0, 1.0]), "differ", "slices"),
    "convert-unreachable-bucket": Case("unreachable bucket", convert("s3://lab/incoming/brain.nii.gz"), "cannot reach", "s3://lab/incoming/brain.nii.gz", setup=unreachable_store),
    "convert-unreachable-output-bucket": Case("unreachable bucket", convert("brain.nii.gz", output="s3://lab/outputs/brain.ome.zarr"), "cannot reach", OUTPUT, setup=unreachable_store),
    "convert-outside-output-roots": Case("path outside the allowed roots", convert("brain.nii.gz"), "outside the output roots", OUTPUT, setup=output_roots("allowed")),
    # ---- register
    "register-unknown-transform": Case("schedule with an unknown transform", register(schedule="bspline.json"), "steps.0.transform", "bspline.json"),
    "register-memory-budget-too-small": Case("memory budget too small", register(memory_budget="1KiB"), "too small even for the coarsest step", "memory-budget"),
    "register-empty-volume": Case("empty (all-zero) volume", register(moving="zeros.ome.zarr"), "empty", "zeros.ome.zarr"),
    "register-no-overlap": Case("fixed and moving with no overlap", register(fixed="centre.ome.zarr", moving="corners.ome.zarr"), "do not overlap", "corners.ome.zarr"),
    "register-incomplete-pyramid": Case("input pyramid marked incomplete", register(moving="incomplete.ome.zarr"), "marked incomplete", "incomplete.ome.zarr"),
    "register-output-inside-input": Case("output inside the input", register(output="fixed.ome.zarr/transform"), "inside the fixed input", OUTPUT),
    "register-existing-output": Case("existing output without overwrite", register(output="existing"), "already exists", OUTPUT),
    "register-outside-output-roots": Case("path outside the allowed roots", register(), "outside the output roots", OUTPUT, setup=output_roots("allowed")),
    # ---- warp
    "warp-no-overlap": Case("fixed and moving with no overlap", warp(moving="far.ome.zarr"), "outside the moving image", "far.ome.zarr"),
    "warp-float-labels": Case("label image with float values", warp(moving="float.ome.zarr", interpolation="label"), "integer image", "float.ome.zarr"),
    "warp-corrupt-transform": Case("corrupt file", warp(transform="garbage.mat"), "garbage.mat", "garbage.mat"),
    "warp-output-inside-input": Case("output inside the input", warp(output="moving.ome.zarr/warped.ome.zarr"), "inside the moving input", OUTPUT),
    "warp-existing-output": Case("existing output without overwrite", warp(output="existing"), "already exists", OUTPUT),
    # ---- run (register-brain)
    "run-missing-file": Case("missing file", run({"uri": "root/atlas.nii.gz"}), "no such file", "atlas.nii.gz"),
    "run-negative-spacing": Case("negative spacing", run({"uri": "stack.tif", "spacing": [100.0, -100.0, 100.0]}), "greater than 0|minimum of 0", "spacing", deployment="refused"),
    "run-contradictory-orientation": Case("contradictory orientation", run({"uri": "brain.nii.gz", "orientation": "aps"}), "contradictory|'aps' does not match", "orientation", deployment="refused"),
    "run-inf-voxels": Case("Inf voxels (found while writing)", run({"uri": "inf.zarr", "spacing": SPACING, "orientation": "asr"}), "NaN/Inf voxels", "inf.zarr"),
    "run-glob-matches-nothing": Case("glob matching nothing", run({"uri": "slices/nothing_*.tif", "spacing": SPACING, "orientation": "asr"}), "match", "nothing_"),
    "run-unreachable-bucket": Case("unreachable bucket", run({"uri": "s3://lab/atlases/atlas.nii.gz"}), "cannot reach", "s3://lab/atlases/atlas.nii.gz", setup=unreachable_store),
    "run-outside-output-roots": Case("path outside the allowed roots", run({"uri": "brain.nii.gz"}), "outside the output roots", OUTPUT, setup=output_roots("allowed")),
    # ---- issue 20: what --overwrite may never touch
    "convert-overwrite-output-holds-input": Case("overwrite of an output that holds the input", convert("inbox/brain.nii.gz", output="inbox", overwrite=True), "would contain the input", OUTPUT),
    "convert-overwrite-output-is-input": Case("overwrite of an output that is the input", convert("fixed.ome.zarr", output="fixed.ome.zarr", overwrite=True), "is the input itself", OUTPUT),
    "convert-overwrite-through-symlink": Case("overwrite of an output that holds the input", convert("inbox/brain.nii.gz", output="inbox-link", overwrite=True), "would contain the input", OUTPUT),
    "convert-overwrite-foreign-output": Case("overwrite of files scalereg did not write", convert("brain.nii.gz", output="existing", overwrite=True), "did not write \\(notes.txt\\)", OUTPUT),
    "warp-overwrite-output-holds-moving": Case("overwrite of an output that holds the input", warp(moving="shelf/moving.ome.zarr", output="shelf", overwrite=True), "would contain the moving input", OUTPUT),
    "register-overwrite-output-holds-fixed": Case("overwrite of an output that holds the input", register(fixed="shelf/fixed.ome.zarr", output="shelf", overwrite=True), "would contain the fixed input", OUTPUT),
    "register-overwrite-foreign-output": Case("overwrite of files scalereg did not write", register(output="existing", overwrite=True), "did not write \\(notes.txt\\)", OUTPUT),
    "run-overwrite-output-holds-input": Case("overwrite of an output that holds the input", run({"uri": "inbox/brain.nii.gz"}, output="inbox", overwrite=True), "would contain the fixed input", OUTPUT),
    # ---- secrets in URLs: refused, masked, never recorded
    "convert-credentials-in-input-url": Case("credentials in a URL", convert(f"s3://{URL_KEY}:{SECRET}@lab/incoming/brain.nii.gz"), "credentials in a URL are refused", "s3://***:***@lab", deployment="refused", python="failed", secret=True),
    "convert-credentials-in-output-url": Case("credentials in a URL", convert("brain.nii.gz", output=f"s3://{URL_KEY}:{SECRET}@lab/outputs/x.ome.zarr"), "credentials in a URL are refused", "s3://***:***@lab", deployment="refused", python="failed", secret=True),
    "warp-credentials-in-transform-url": Case("credentials in a URL", warp(transform=f"s3://{URL_KEY}:{SECRET}@lab/tx/affine.mat"), "credentials in a URL are refused", "s3://***:***@lab", deployment="refused", python="failed", secret=True),
    "run-credentials-in-fixed-url": Case("credentials in a URL", run({"uri": f"s3://{URL_KEY}:{SECRET}@lab/atlases/atlas.nii.gz"}), "credentials in a URL are refused", "s3://***:***@lab", deployment="refused", python="failed", secret=True),
    "convert-invalid-bucket-name": Case("invalid bucket name", convert("brain.nii.gz", output="s3://Lab_Outputs/x.ome.zarr"), "not a valid bucket name", "s3://Lab_Outputs/x.ome.zarr"),
    "convert-invalid-input-bucket-name": Case("invalid bucket name", convert("s3://ab/brain.nii.gz"), "not a valid bucket name", "s3://ab/brain.nii.gz"),
    # ---- headers that lie, types scalereg cannot hold
    "convert-header-claims-a-petabyte": Case("header claiming an enormous size", convert("huge.mha"), "truncated|can hold", "huge.mha"),
    "convert-compressed-header-claims-a-petabyte": Case("header claiming an enormous size", convert("huge.nrrd"), "more than the file's", "huge.nrrd"),
    "run-header-claims-more-than-the-file-holds": Case("header claiming an enormous size", run({"uri": "huge.nii.gz"}), "more than the file's", "huge.nii.gz"),
    "convert-complex-voxels": Case("complex voxels", convert("complex.nii.gz"), "complex numbers", "complex.nii.gz"),
    "convert-rgb-voxels": Case("RGB voxels", convert("rgb.nii.gz"), "several components", "rgb.nii.gz"),
    "convert-boolean-voxels": Case("boolean voxels as intensities", convert("bool.zarr", spacing=[1.0, 1.0, 1.0]), "boolean", "bool.zarr"),
    "convert-unknown-unit-code": Case("unknown unit in the header", convert("unitcode.nii.gz"), "not a NIfTI space unit", "unitcode.nii.gz"),
    "convert-nan-origin": Case("NaN origin in the header", convert("nanorigin.nii.gz"), "finite", "nanorigin.nii.gz"),
    "convert-implausible-spacing-in-header": Case("implausible spacing", convert("implausible.nii.gz"), "not a plausible voxel size", "implausible.nii.gz"),
    "convert-implausible-spacing": Case("implausible spacing", convert("brain.nii.gz", spacing=[1e308, 1e308, 1e308]), "not a plausible voxel size", "spacing"),
    "convert-corrupt-zarr-chunk": Case("corrupt chunk in a source (found while writing)", convert("corrupt-chunk.zarr", spacing=[1.0, 1.0, 1.0]), "chunk 1.1.1 cannot be decoded", "corrupt-chunk.zarr"),
    # ---- hostile OME-Zarr metadata
    "convert-level-path-leaves-the-image": Case("hostile OME-Zarr metadata", convert("dotdot.ome.zarr"), "not a name inside the image", "dotdot.ome.zarr"),
    "register-level-path-is-the-group": Case("hostile OME-Zarr metadata", register(moving="grouppath.ome.zarr"), "not a name inside the image", "grouppath.ome.zarr"),
    "warp-zero-scale": Case("hostile OME-Zarr metadata", warp(moving="zeroscale.ome.zarr"), "positive", "zeroscale.ome.zarr"),
    "convert-attributes-not-an-object": Case("hostile OME-Zarr metadata", convert("nonobject.ome.zarr"), "not a Zarr group|attributes are not an object", "nonobject.ome.zarr"),
    # ---- parameters no run can use
    "convert-memory-budget-overflows": Case("memory budget that overflows", convert("brain.nii.gz", memory_budget="1e400"), "not a plausible amount of memory|does not match", "memory-budget", deployment="refused"),
    "convert-chunks-too-large": Case("chunks too large", convert("brain.nii.gz", chunks=1000000000), "too large|less than or equal to 1024|greater than the maximum of 1024", "chunks", deployment="refused"),
    "register-infinite-schedule-spacing": Case("schedule with an infinite spacing", register(schedule="inf-schedule.json"), "finite number", "inf-schedule.json"),
    "register-schedule-bomb": Case("schedule that expands to billions of values", register(schedule="bomb-schedule.yaml"), "more than 10000 values", "bomb-schedule.yaml"),
    # ---- transform directories changed after the registration
    "warp-transform-file-changed": Case("transform file changed since the registration", warp(transform="tampered-transform"), "forward/affine.mat: contents differ", "tampered-transform"),
    "warp-manifest-not-an-object": Case("transform manifest that is not an object", warp(transform="list-manifest-transform"), "not a scalereg transform manifest", "list-manifest-transform"),
    "warp-chain-entry-without-kind": Case("transform manifest with a chain entry without kind", warp(transform="kindless-transform"), "is not a transform", "kindless-transform"),
    # ---- places an output cannot be written
    "convert-output-under-a-file": Case("output under a regular file", convert("brain.nii.gz", output="regular-file/x.ome.zarr"), "is a file, not a folder", OUTPUT),
    "convert-output-on-read-only-filesystem": Case("output on a read-only filesystem", convert("brain.nii.gz", output="readonly/x.ome.zarr"), "read-only filesystem", OUTPUT),
    "convert-output-on-full-disk": Case("output on a full disk", convert("brain.nii.gz", output="full/x.ome.zarr"), "is full", OUTPUT),
    "convert-disk-fills-while-writing": Case("disk that fills while writing", convert("noise.zarr", output="small-disk/x.ome.zarr", spacing=[1.0, 1.0, 1.0]), "cannot be written", "small-disk"),
    "convert-output-being-written": Case("output another run is writing", convert("brain.nii.gz", output="busy.ome.zarr"), "is being written by run", OUTPUT, setup=lambda monkeypatch, data: _hold_lock(data)),
}


def _hold_lock(data: dict[str, str]) -> Callable[[], None] | None:
    """The lock of busy.ome.zarr, held by another run (once per case; released after it)."""
    from scalereg.output_lock import OutputLock

    if _HELD:
        return None
    _HELD.append(OutputLock(os.path.join(data["root"], "busy.ome.zarr"), run="another run 'held-by-the-test'").acquire())
    return lambda: _HELD.pop().release()


_HELD: list[Any] = []


# ------------------------------------------------------------------------ machinery


@pytest.fixture(scope="module")
def quick_prefect(prefect_server):
    """The session's Prefect server, without flow-run heartbeats: Prefect joins the
    heartbeat thread at the end of every flow run, which costs up to a second per run
    (the catalogue runs about a hundred)."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


@pytest.fixture(scope="module")
def cluster(quick_prefect):
    """One small in-process Dask cluster for every flow run (its tcp:// address is a
    cluster the flows use and leave running)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, memory_limit="2GiB", protocol="tcp", dashboard_address=":0") as local:
        yield local.scheduler_address


def _flow(command: str):
    from flows.convert_volume import convert_volume
    from flows.register_brain import register_brain
    from flows.register_volume import register_volume
    from flows.warp_volume import warp_volume

    return {"convert": convert_volume, "register": register_volume, "warp": warp_volume, "run": register_brain}[command]


@pytest.fixture(scope="module")
def deployments(quick_prefect) -> dict[str, Any]:
    """The four flows deployed as deployments/prefect.yaml deploys them (parameter
    schemas enforced); command -> deployment id."""
    return {
        command: _flow(command).to_deployment(name=f"catalogue-{command}", enforce_parameter_schema=True).apply()
        for command in ("convert", "register", "warp", "run")
    }


def _output_name(command: str) -> str:
    """The output of a leg (when the case does not give its own)."""
    return {"convert": "out.ome.zarr", "register": "transform", "warp": "warped.ome.zarr", "run": "run"}[command]


def _target(command: str, parameters: dict[str, Any]) -> str:
    """The output the command was given."""
    return parameters["output" if command in ("convert", "warp") else "out"]


def assert_nothing_marked_complete(path: str, whole: tuple[str, ...] = ()) -> None:
    """Nothing at ``path`` says it is finished: no pyramid marked complete, no
    transform manifest, no pipeline report -- except the outputs named in ``whole``
    (made from good inputs), which may be finished but must then be whole (valid)."""
    if "://" in path or not os.path.exists(path):
        return
    for item in [Path(path), *Path(path).rglob("*")]:
        within = item.relative_to(path).parts[:1]
        if within and within[0] in whole:
            if item.parent == Path(path) / within[0] and _status(item) == "complete":
                assert validate_pyramid(str(item.parent)) == [], f"{item.parent} is marked complete but is not whole"
            continue
        assert item.name not in ("manifest.json", "report.md"), f"{item} says the output is finished"
        assert _status(item) != "complete", f"{item.parent} is marked complete"


def _status(item: Path) -> str | None:
    """The scalereg status a group's metadata file records (None for any other file)."""
    if item.name not in ("zarr.json", ".zattrs"):
        return None
    document = json.loads(item.read_text() or "{}")
    return (document.get("attributes", document).get("scalereg") or {}).get("status")


def _left_whole(command: str) -> tuple[str, ...]:
    """Outputs a failed run may have finished from good inputs: register-brain converts
    the moving volume (always a good one here) side by side with the bad fixed one, and
    a small one can be done before the fixed one's bad block is found."""
    return ("moving.ome.zarr",) if command == "run" else ()


def _check_message(message: str, case: Case, output: str) -> None:
    assert re.search(case.expect, message, re.IGNORECASE), message
    names = output if case.names == OUTPUT else case.names
    # a parameter is memory-budget on the command line, memory_budget from Python
    assert names.lower().replace("_", "-") in message.lower().replace("_", "-"), f"{message!r} does not name {names}"
    if case.names == OUTPUT:  # the output given, not a file scalereg keeps beside it (advice may name that)
        first = message.lower().index(output.lower()) + len(output)
        assert not message.lower()[first:].startswith(".lock"), f"{message!r} names the output's lock"
    assert "Traceback" not in message, message


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, data, cluster, deployments, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.delenv("SCALEREG_OUTPUT_ROOTS", raising=False)
    monkeypatch.setenv("SCALEREG_LOG_DIR", str(tmp_path / "logs"))
    cleanups: list[Callable[[], None]] = []

    def leg_env() -> None:
        undo = case.setup(monkeypatch, data) if case.setup else None
        if undo is not None:
            cleanups.append(undo)

    said: list[str] = []  # every message of the three legs
    try:
        # 1. the command line: exit code 2, one line naming the input
        argv, parameters = case.build(data, str(tmp_path / "cli" / _output_name(case.command)), cluster)
        leg_env()
        before = _snapshot(data["root"], tmp_path)
        code = main(argv)
        captured = capsys.readouterr()
        said += [captured.out, captured.err]
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 2, captured
        assert len(lines) == 1 and lines[0].startswith("scalereg: error: "), captured.err
        _check_message(lines[0], case, _target(case.command, parameters))
        _check_leg(case, parameters, before, data, tmp_path)

        # 2. Python: the flow run ends Failed with the message
        _, parameters = case.build(data, str(tmp_path / "python" / _output_name(case.command)), cluster)
        before = _snapshot(data["root"], tmp_path)
        state = _flow(case.command)(**parameters, return_state=True)
        said.append(state.message or "")
        assert state.is_failed(), state
        _check_message(state.message, case, _target(case.command, parameters))
        if case.python_way != "refused":  # refused by the models: Prefect's parameter validation says which
            assert state.name == BAD_INPUT_STATE and "\n" not in state.message, state
        _check_leg(case, parameters, before, data, tmp_path)

        # 3. a deployment (outputs confined to the worker's roots, as start.sh configures
        # them; the inputs' directory is one too, for the cases whose output is refused there)
        roots = tmp_path / "deployed"
        roots.mkdir()
        monkeypatch.setenv("SCALEREG_OUTPUT_ROOTS", f"{roots}:{data['root']}")
        leg_env()
        _, parameters = case.build(data, str(roots / _output_name(case.command)), cluster)
        before = _snapshot(data["root"], tmp_path)
        message = _deployment_run(deployments[case.command], _flow(case.command), parameters, case.deployment)
        if case.secret:
            # the schema's pattern refused the URL: the server quotes the value back to its
            # sender (Prefect's message); nothing was stored, which the search below checks
            assert "does not match" in message, message
        else:
            said.append(message)
            _check_message(message, case, _target(case.command, parameters))
        _check_leg(case, parameters, before, data, tmp_path)
    finally:
        for undo in cleanups:
            undo()
    if case.secret:
        _assert_secret_nowhere(said, [data["root"], str(tmp_path), *_prefect_database_files()])


def _snapshot(*folders: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders`` (symlinks not followed), by path."""
    found = {}
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        found[path] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _check_leg(case: Case, parameters: dict[str, Any], before: dict[str, str], data: dict[str, str], tmp_path: Path) -> None:
    """After one leg: nothing marked complete, every file that was there before is there
    unchanged, and nothing new anywhere but at the leg's output (what a run that failed
    mid-way leaves, marked incomplete)."""
    target = _target(case.command, parameters)
    inside = target.rstrip("/") + "/"
    if not any(path == target or path.startswith(inside) for path in before):  # what was there before is checked unchanged below
        assert_nothing_marked_complete(target, _left_whole(case.command))
    after = _snapshot(data["root"], tmp_path)
    changed = sorted(path for path, digest in before.items() if after.get(path) != digest)
    assert not changed, f"files that were there before changed or went: {changed[:5]}"
    logs = str(tmp_path / "logs")
    new = sorted(p for p in after if p not in before and not p.startswith(logs) and not (p == target or p.startswith(inside)))
    assert not new, f"files written outside the output {target}: {new[:5]}"


def _prefect_database_files() -> list[str]:
    """The files of the Prefect server's database (its flow runs, logs, artifacts)."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    path = url.split("///", 1)[1] if url.startswith("sqlite") and "///" in url else ""
    return [p for p in (path, f"{path}-wal", f"{path}-journal") if p and os.path.exists(p)]


def _assert_secret_nowhere(said: list[str], places: list[str]) -> None:
    """The credential cases' secret is in no message and no byte of any file under
    ``places`` (folders or files)."""
    assert not any(SECRET in text for text in said), [text for text in said if SECRET in text]
    secret = SECRET.encode()
    holding = []
    for place in places:
        files = [place] if os.path.isfile(place) else [os.path.join(d, f) for d, _, names in os.walk(place) for f in names]
        for path in files:
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    if secret in handle.read():
                        holding.append(path)
    assert not holding, f"the secret was written to {holding}"


def _deployment_run(deployment_id, flow, parameters: dict[str, Any], expected: str) -> str:
    """What a deployment does with ``parameters``: the server's refusal, or the message
    of the run's final state (the run executed here, as a process worker runs it)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        try:
            flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        except PrefectHTTPStatusError as error:
            assert expected == "refused", f"the server refused parameters the flow should get: {error}"
            assert error.response.status_code == 409
            return error.response.json()["detail"]
        assert expected == "failed", f"the server accepted parameters its schema should refuse: {parameters}"
        run_flow(flow, flow_run=flow_run, return_type="state")
        final = client.read_flow_run(flow_run.id).state
    assert final.is_failed() and final.name == BAD_INPUT_STATE, final
    assert "\n" not in final.message, final.message
    return final.message


def test_the_catalogue_is_documented():
    """docs/bad-inputs.md lists every case (and nothing that is no longer one)."""
    text = (REPO / "docs" / "bad-inputs.md").read_text()
    documented = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    assert documented == set(CASES) | set(NO_FLOW_CASES)
    assert "docs/bad-inputs.md" in (REPO / "README.md").read_text()


def test_the_catalogue_covers_every_kind_the_issue_names():
    kinds = {case.kind.split(" (")[0] for case in CASES.values()}
    named = {
        "corrupt file", "truncated file", "2D input", "4D input", "NaN voxels", "Inf voxels", "zero spacing", "negative spacing",
        "unknown unit", "contradictory orientation", "unknown orientation code", "fixed and moving with no overlap",
        "label image with float values", "schedule with an unknown transform", "memory budget too small",
        "output inside the input", "path outside the allowed roots", "unreachable bucket", "missing file",
        "existing output without overwrite", "glob matching nothing",
    }  # fmt: skip
    assert named <= kinds, named - kinds
    # issue 20's classes
    named = {
        "overwrite of an output that holds the input", "overwrite of an output that is the input", "overwrite of files scalereg did not write",
        "credentials in a URL", "invalid bucket name", "header claiming an enormous size", "complex voxels", "RGB voxels",
        "boolean voxels as intensities", "unknown unit in the header", "NaN origin in the header", "implausible spacing",
        "corrupt chunk in a source", "hostile OME-Zarr metadata", "memory budget that overflows", "chunks too large",
        "schedule with an infinite spacing", "schedule that expands to billions of values", "transform file changed since the registration",
        "transform manifest that is not an object", "transform manifest with a chain entry without kind", "output under a regular file",
        "output on a read-only filesystem", "output on a full disk", "disk that fills while writing", "output another run is writing",
    }  # fmt: skip
    assert named <= kinds, named - kinds
    assert {kind for case in NO_FLOW_CASES.values() for kind in [case.kind]} >= {
        "existing output without overwrite", "output that is an input", "overwrite of files scalereg did not write", "points that are a directory",
        "transform file changed since the registration", "missing file", "hostile OME-Zarr metadata", "plain Zarr group",
    }  # fmt: skip
    assert any(kind.startswith("empty") for kind in kinds)
    assert {case.command for case in CASES.values()} == {"convert", "register", "warp", "run"}
    assert len(CASES) >= 70


# ------------------------------------------------------------ commands that run no flow


@dataclass(frozen=True)
class NoFlowCase:
    kind: str
    argv: Callable[[dict[str, str], Path], list[str]]  # (data, a fresh folder) -> CLI arguments
    expect: str
    names: str
    python: Callable[[dict[str, str], Path], Any] | None = None  # the same through the core's functions


def _points(data: dict[str, str], *extra: str) -> list[str]:
    return ["transform-points", "--transform", data["transform"], "--points", data["points.csv"], "--coordinates", "lps", *extra]


def _core_points(data: dict[str, str], transform: str | None = None) -> Any:
    from scalereg.transforms.transform_points import transform_points

    return transform_points(np.zeros((1, 3)), transform or data["transform"], coordinates="lps")


NO_FLOW_CASES: dict[str, NoFlowCase] = {
    "points-existing-output": NoFlowCase("existing output without overwrite", lambda d, t: _points(d, "--out", d["mapped.csv"]), "already exists.*--overwrite", "--out"),
    "points-output-is-the-points": NoFlowCase("output that is an input", lambda d, t: _points(d, "--out", d["points.csv"]), "is the points file itself", "--out"),
    "points-overwrite-foreign-file": NoFlowCase("overwrite of files scalereg did not write", lambda d, t: _points(d, "--out", d["regular-file"], "--overwrite"), "scalereg did not write", "--out"),
    "points-directory": NoFlowCase("points that are a directory", lambda d, t: ["transform-points", "--transform", d["transform"], "--points", d["inbox"], "--out", str(t / "o.csv"), "--coordinates", "lps"], "is a directory", "inbox"),
    "points-transform-changed": NoFlowCase(
        "transform file changed since the registration", lambda d, t: _points({**d, "transform": d["tampered-transform"]}, "--out", str(t / "o.csv")),
        "contents differ", "tampered-transform", python=lambda d, t: _core_points(d, d["tampered-transform"]),
    ),
    "points-manifest-not-an-object": NoFlowCase(
        "transform manifest that is not an object", lambda d, t: _points({**d, "transform": d["list-manifest-transform"]}, "--out", str(t / "o.csv")),
        "not a scalereg transform manifest", "list-manifest-transform", python=lambda d, t: _core_points(d, d["list-manifest-transform"]),
    ),
    "validate-missing-path": NoFlowCase("missing file", lambda d, t: ["validate", os.path.join(d["root"], "nothing.ome.zarr")], "no such file", "nothing.ome.zarr"),
    "info-level-path-leaves-the-image": NoFlowCase(
        "hostile OME-Zarr metadata", lambda d, t: ["info", d["dotdot.ome.zarr"]], "not a name inside the image", "dotdot.ome.zarr",
        python=lambda d, t: __import__("scalereg.omezarr", fromlist=["read_pyramid"]).read_pyramid(d["dotdot.ome.zarr"]),
    ),
    "info-plain-zarr-group": NoFlowCase("plain Zarr group", lambda d, t: ["info", d["plain-group.zarr"]], "no OME-Zarr 'multiscales' metadata", "plain-group.zarr"),
}


@pytest.fixture(scope="module")
def no_flow_data(data) -> dict[str, str]:
    """The catalogue's inputs, and what the no-flow cases add: points, an earlier result."""
    root = Path(data["root"])
    extra = {"points.csv": root / "points.csv", "mapped.csv": root / "mapped.csv", "plain-group.zarr": root / "plain-group.zarr"}
    extra["points.csv"].write_text("x,y,z\n1.0,2.0,3.0\n")
    extra["mapped.csv"].write_text("x,y,z,outside_field\n1.0,2.0,3.0,False\n")  # written by an earlier transform-points
    zarr.open_group(str(extra["plain-group.zarr"]), mode="w")
    return {**data, **{name: str(path) for name, path in extra.items()}}


@pytest.mark.parametrize("name", list(NO_FLOW_CASES))
def test_bad_input_without_a_flow(name, no_flow_data, tmp_path, monkeypatch, capsys):
    """transform-points, validate and info: exit code 2 and one line naming the input,
    nothing that was there changed, nothing new; from Python an InputError."""
    from scalereg.errors import InputError

    case = NO_FLOW_CASES[name]
    monkeypatch.setenv("SCALEREG_LOG_DIR", str(tmp_path / "logs"))
    before = _snapshot(no_flow_data["root"], tmp_path)
    code = main(case.argv(no_flow_data, tmp_path))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("scalereg: error: "), captured.err
    assert re.search(case.expect, lines[0], re.IGNORECASE) and case.names.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in captured.out + captured.err
    after = _snapshot(no_flow_data["root"], tmp_path)
    assert {p: d for p, d in after.items() if not p.startswith(str(tmp_path / "logs"))} == before
    if case.python is not None:
        with pytest.raises(InputError, match=case.expect):
            case.python(no_flow_data, tmp_path)
