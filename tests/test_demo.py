"""The README's main job: `scalereg demo` (sample brain, LocalCluster, Prefect's
temporary server) registers a moved copy of the mouse brain back to it, and a second
run in the same directory resumes: every stage skipped, the same result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCALEREG = str(Path(sys.executable).parent / "scalereg")


def _demo(out: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own temporary server
    env["PREFECT_HOME"] = str(home)
    return subprocess.run([SCALEREG, "demo", "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)


def _ncc(stdout: str) -> tuple[float, float]:
    match = re.search(r"NCC with the original brain: moved copy ([0-9.]+), warped back ([0-9.]+)", stdout)
    assert match, stdout[-3000:]
    return float(match.group(1)), float(match.group(2))


def test_demo_registers_the_moved_brain_back_and_a_rerun_resumes(tmp_path):
    out, home = tmp_path / "scalereg-demo", tmp_path / "prefect-home"
    first = _demo(out, home)
    assert first.returncode == 0, first.stderr[-3000:]
    moved, warped = _ncc(first.stdout)
    assert warped > 0.97 and warped > moved + 0.1, first.stdout[-3000:]
    median = float(re.search(r"recovered mapping on brain voxels: median ([0-9.]+) um \(affine only: ([0-9.]+) um\)", first.stdout).group(1))
    assert median < 150, first.stdout[-3000:]  # 50 um voxels; about 55-60 um seen
    for name in ("fixed.ome.zarr", "moving.ome.zarr", "warped.ome.zarr", "report.md", "transform/manifest.json"):
        assert (out / "outputs" / name).exists(), name
    moved_mtime = (out / "inputs" / "moved.zarr").stat().st_mtime_ns

    second = _demo(out, home)  # the README's command again, in the same directory
    assert second.returncode == 0, second.stderr[-3000:]
    stages = dict(re.findall(r"^(convert fixed|convert moving|register|warp): (.+?) -> ", second.stdout, flags=re.MULTILINE))
    assert set(stages) == {"convert fixed", "convert moving", "register", "warp"}, second.stdout[-3000:]
    assert all(state.startswith("skipped") for state in stages.values()), stages
    assert _ncc(second.stdout) == (moved, warped)
    assert (out / "inputs" / "moved.zarr").stat().st_mtime_ns == moved_mtime  # the moving input was left as it was
