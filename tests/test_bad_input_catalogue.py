"""The catalogue of bad inputs (issue 8), listed for users in docs/bad-inputs.md.

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
``complete``, no transform directory with its ``manifest.json``, no ``report.md``).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
def data(tmp_path_factory) -> dict[str, str]:
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

    paths["tiny.json"] = root / "tiny.json"
    paths["tiny.json"].write_text(json.dumps(TINY_SCHEDULE))
    paths["bspline.json"] = root / "bspline.json"
    paths["bspline.json"].write_text(json.dumps({"steps": [{**TINY_SCHEDULE["steps"][0], "transform": "bspline"}]}))
    import ants

    paths["identity.mat"] = root / "identity.mat"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(paths["identity.mat"]))
    paths["garbage.mat"] = root / "garbage.mat"
    paths["garbage.mat"].write_bytes(b"#Insight Transform File V1.0\nnot a transform\n" * 4)
    return {name: str(path) for name, path in paths.items()}


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


def register(fixed: str = "fixed.ome.zarr", moving: str = "moving.ome.zarr", output: str | None = None, schedule: str = "tiny.json", memory_budget: str | None = None) -> Build:
    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        target = _path(data, output) if output else out
        f, m, s = _path(data, fixed), _path(data, moving), _path(data, schedule)
        argv = ["register", "--fixed", f, "--moving", m, "--out", target, "--schedule", s]
        parameters: dict[str, Any] = {"fixed": f, "moving": m, "out": target, "schedule": s, "cluster": cluster}
        if memory_budget:
            argv += ["--memory-budget", memory_budget]
            parameters["memory_budget"] = memory_budget
        return argv, parameters

    return build


def warp(transform: str = "identity.mat", moving: str = "moving.ome.zarr", reference: str = "fixed.ome.zarr", output: str | None = None, interpolation: str = "linear") -> Build:
    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        target = _path(data, output) if output else out
        t, m, r = _path(data, transform), _path(data, moving), _path(data, reference)
        argv = ["warp", "--transform", t, "--moving", m, "--reference", r, "--out", target, "--interpolation", interpolation, "--cluster", cluster]
        parameters = {"transform": [t], "moving": m, "reference": r, "output": target, "interpolation": interpolation, "cluster": cluster}
        return argv, parameters

    return build


def run(fixed: dict[str, Any], moving: dict[str, Any] | None = None, schedule: str = "tiny.json") -> Build:
    """register-brain; images as {"uri": name, "spacing": ..., "orientation": ...}."""
    moving = moving or {"uri": "stack.tif", "spacing": SPACING, "orientation": "asr"}

    def build(data: dict[str, str], out: str, cluster: str) -> tuple[list[str], dict[str, Any]]:
        images = {role: {**image, "uri": _path(data, image["uri"])} for role, image in (("fixed", fixed), ("moving", moving))}
        argv = ["run", "--out", out, "--schedule", _path(data, schedule), "--chunks", "16", "--cluster", cluster]
        for role, image in images.items():
            argv += [f"--{role}", image["uri"]]
            if "spacing" in image:
                argv += [f"--{role}-spacing", *map(str, image["spacing"])]
            for key in ("unit", "orientation"):
                if key in image:
                    argv += [f"--{role}-{key}", image[key]]
        parameters = {**images, "out": out, "registration": {"schedule": _path(data, schedule)}, "chunks": 16, "cluster": cluster}
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
    setup: Callable[[pytest.MonkeyPatch, dict[str, str]], None] | None = None

    @property
    def command(self) -> str:
        return self.build.__qualname__.split(".")[0]


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
}


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
    assert names.lower() in message.lower(), f"{message!r} does not name {names}"
    if case.names == OUTPUT:  # the output given, not a file scalereg keeps beside it
        assert f"{output}.lock".lower() not in message.lower(), f"{message!r} names the output's lock"
    assert "Traceback" not in message, message


def _untouched(data: dict[str, str]) -> None:
    existing = Path(data["existing"])
    assert [p.name for p in existing.iterdir()] == ["notes.txt"], "a refused output must be left as it was"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, data, cluster, deployments, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.delenv("SCALEREG_OUTPUT_ROOTS", raising=False)
    leg_env = (lambda: case.setup(monkeypatch, data)) if case.setup else (lambda: None)

    # 1. the command line: exit code 2, one line naming the input
    argv, parameters = case.build(data, str(tmp_path / "cli" / _output_name(case.command)), cluster)
    leg_env()
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("scalereg: error: "), captured.err
    _check_message(lines[0], case, _target(case.command, parameters))
    assert_nothing_marked_complete(_target(case.command, parameters), _left_whole(case.command))

    # 2. Python: the flow run ends Failed with the message
    _, parameters = case.build(data, str(tmp_path / "python" / _output_name(case.command)), cluster)
    state = _flow(case.command)(**parameters, return_state=True)
    assert state.is_failed(), state
    _check_message(state.message, case, _target(case.command, parameters))
    if case.deployment != "refused":  # refused by the models: Prefect's parameter validation says which
        assert state.name == BAD_INPUT_STATE and "\n" not in state.message, state
    assert_nothing_marked_complete(_target(case.command, parameters), _left_whole(case.command))

    # 3. a deployment (outputs confined to the worker's roots, as start.sh configures
    # them; the inputs' directory is one too, for the cases whose output is refused there)
    roots = tmp_path / "deployed"
    roots.mkdir()
    monkeypatch.setenv("SCALEREG_OUTPUT_ROOTS", f"{roots}:{data['root']}")
    leg_env()
    _, parameters = case.build(data, str(roots / _output_name(case.command)), cluster)
    message = _deployment_run(deployments[case.command], _flow(case.command), parameters, case.deployment)
    _check_message(message, case, _target(case.command, parameters))
    assert_nothing_marked_complete(_target(case.command, parameters), _left_whole(case.command))
    if "existing" in name:
        _untouched(data)


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
    assert documented == set(CASES)
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
    assert any(kind.startswith("empty") for kind in kinds)
    assert {case.command for case in CASES.values()} == {"convert", "register", "warp", "run"}
    assert len(CASES) >= 24
