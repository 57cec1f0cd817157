"""The command line: bad input gets one line naming the input and exit code 2, and
leaves nothing behind that looks complete; info, validate and dry runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from conftest import phantom, write_bad_sources
from scalereg.cli import main


@pytest.fixture
def files(tmp_path):
    written = write_bad_sources(tmp_path)
    names = {"tif": "stack.tif", "nii": "brain.nii.gz", "truncated": "truncated.nii.gz", "garbage": "garbage.nii", "flat": "flat.tif", "4d": "4d.nii.gz", "mixed": "slices"}
    paths = {key: written[name] for key, name in names.items()}
    paths["empty"] = tmp_path / "empty.zarr"
    zarr.create_array(str(paths["empty"]), shape=(0, 4, 4), dtype="uint8")
    paths["existing"] = tmp_path / "existing.ome.zarr"
    paths["existing"].mkdir()
    (paths["existing"] / "notes.txt").write_text("someone else's")  # an empty directory would be nothing in the way
    return paths


CASES = {
    # name: (argv builder, text expected in the message, input named in the message)
    "truncated file": (lambda p, o: ["convert", str(p["truncated"]), o], "truncated", "truncated"),
    "not a volume": (lambda p, o: ["convert", str(p["garbage"]), o], "garbage.nii", "garbage"),
    "2D input": (lambda p, o: ["convert", str(p["flat"]), o, "--spacing", "1", "1", "1"], "3D", "flat"),
    "4D input": (lambda p, o: ["convert", str(p["4d"]), o], "3D", "4d"),
    "zero-size axis": (lambda p, o: ["convert", str(p["empty"]), o, "--spacing", "1", "1", "1"], "empty axis", "empty"),
    "zero spacing": (lambda p, o: ["convert", str(p["tif"]), o, "--spacing", "0", "1", "1"], "positive", "spacing"),
    "negative spacing": (lambda p, o: ["convert", str(p["tif"]), o, "--spacing", "1", "-1", "1"], "positive", "spacing"),
    "NaN spacing": (lambda p, o: ["convert", str(p["tif"]), o, "--spacing", "nan", "1", "1"], "positive", "spacing"),
    "missing spacing": (lambda p, o: ["convert", str(p["tif"]), o], "no voxel spacing", "stack.tif"),
    "unknown orientation": (lambda p, o: ["convert", str(p["nii"]), o, "--orientation", "xyz"], "unknown orientation", "orientation"),
    "contradictory orientation": (lambda p, o: ["convert", str(p["nii"]), o, "--orientation", "aps"], "contradictory", "orientation"),
    "unknown unit": (lambda p, o: ["convert", str(p["nii"]), o, "--unit", "parsec"], "unknown unit", "unit"),
    "existing output": (lambda p, o: ["convert", str(p["nii"]), str(p["existing"])], "already exists", "existing.ome.zarr"),
    "glob matches nothing": (lambda p, o: ["convert", str(p["mixed"] / "nothing_*.tif"), o, "--spacing", "1", "1", "1"], "match", "nothing_"),
    "slices of different shapes": (lambda p, o: ["convert", str(p["mixed"]), o, "--spacing", "1", "1", "1"], "differ", "slices"),
    "missing file": (lambda p, o: ["convert", str(p["tif"]) + ".missing", o], "no such file", "missing"),
    "memory budget too small": (lambda p, o: ["convert", str(p["nii"]), o, "--memory-budget", "1KiB"], "too small", "memory-budget"),
    "bad memory budget": (lambda p, o: ["convert", str(p["nii"]), o, "--memory-budget", "lots"], "cannot read", "memory-budget"),
    "shards with NGFF 0.4": (lambda p, o: ["convert", str(p["nii"]), o, "--ngff-version", "0.4", "--shards", "256"], "sharding", "shards"),
    "unknown cluster": (lambda p, o: ["convert", str(p["nii"]), o, "--cluster", "mars"], "unknown cluster", "cluster"),
    "info on a non-OME-Zarr": (lambda p, o: ["info", str(p["empty"])], "", "empty.zarr"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_clear_line_and_exit_code_2(case, files, tmp_path, capsys):
    build, expected, named = CASES[case]
    out = str(tmp_path / "out.ome.zarr")
    argv = build(files, out)
    if case == "unknown cluster":
        # the cluster is only looked up when the flow runs; check it without starting Prefect
        from flows.cluster import cluster_spec
        from scalereg.errors import InputError

        with pytest.raises(InputError) as error:
            cluster_spec("mars")
        message = str(error.value)
    else:
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, captured
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1, captured.err
        message = lines[0]
        assert message.startswith("scalereg: error: ")
    assert expected.lower() in message.lower()
    assert named.lower() in message.lower()
    assert not os.path.exists(out), "a failed command must not leave an output behind"


def test_no_traceback_reaches_the_user(files, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scalereg.cli", "convert", str(files["truncated"]), str(tmp_path / "o.ome.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "truncated.nii.gz" in result.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "plan.ome.zarr"
    assert main(["convert", str(files["tif"]), str(out), "--spacing", "4", "1", "1", "--chunks", "8", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "20 x 24 x 28 uint16" in printed
    assert "memory/task" in printed
    assert not out.exists()


def test_info_and_validate(files, tmp_path, capsys):
    from scalereg.convert import convert_volume

    out = tmp_path / "brain.ome.zarr"
    convert_volume(str(files["nii"]), str(out), chunks=8, min_size=4)
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "status: complete" in printed and "millimeter" in printed and "20 x 24 x 28" in printed
    assert main(["info", "--json", str(out)]) == 0
    assert '"ngff_version": "0.5"' in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0
    assert "valid" in capsys.readouterr().out
    # break the voxel-centre promise: validate must notice
    group = zarr.open_group(str(out), mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][1]["translation"] = [0.0, 0.0, 0.0]
    group.attrs["ome"] = ome
    assert main(["validate", str(out)]) == 1
    assert "voxel centres" in capsys.readouterr().out


def _python(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it must succeed."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_core_never_imports_prefect():
    code = (
        "import sys, scalereg, scalereg.io, scalereg.convert, scalereg.omezarr, scalereg.pyramid, "
        "scalereg.sample_data, scalereg.cli\n"
        "from scalereg.cli import main\n"
        "main(['info', '/nonexistent'])\n"
        "assert not any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules), 'prefect imported'\n"
    )
    _python(code)


def test_conversion_and_warp_never_load_ants():
    """ANTs (ITK's libraries) costs ~0.2 GiB in every process that imports it: the
    conversion and warp flows, their tasks and the CLI must not, in the driver or in a
    worker (the pyramid benchmark's workers went from 0.43 to 0.62 GiB when they did)."""
    code = (
        "import sys, scalereg.cli, flows.cluster, flows.convert_volume, flows.warp_volume, tasks.convert\n"
        "assert 'ants' not in sys.modules, 'ants imported'\n"
    )
    _python(code)


def test_the_registration_flows_driver_does_not_load_ants():
    """A registration flow plans its steps in the driver and runs them on workers:
    the driver (the CLI's process) must not pay ANTs' second and 0.2 GiB at start-up;
    the module that runs the steps loads it when first used."""
    code = (
        "import sys, scalereg.cli, flows.register_brain, flows.register_volume, tasks.register, scalereg.register\n"
        "assert 'ants' not in sys.modules, 'ants imported'\n"
        "from scalereg.register.ants_image import ants\n"
        "assert ants.ANTsImage.__module__.startswith('ants'), 'not ANTs'\n"
        "assert 'ants' in sys.modules\n"
    )
    _python(code)


def test_bad_voxels_found_mid_run_exit_2_without_traceback(tmp_path):
    volume = phantom((32, 32, 32), "float32")
    volume[25, 3, 4] = np.nan
    raw = tmp_path / "nan.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp_path / "nan.ome.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "scalereg.cli", "convert", str(raw), str(out), "--spacing", "1", "1", "1", "--chunks", "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scalereg: error: ") and "NaN/Inf" in last and "nan.zarr" in last
    assert zarr.open_group(str(out), mode="r").attrs["scalereg"]["status"] == "incomplete"
