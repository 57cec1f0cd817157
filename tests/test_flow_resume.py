"""A warp run killed mid-way resumes: finished tiles are not recomputed and the output is
byte-identical to an uninterrupted run's.  The killed run is a real `scalereg warp`
process (flow, LocalCluster workers and all) sent SIGKILL while its tiles are written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import kill_command
from scalereg.convert.run_block import PROGRESS_DIR

pytestmark = pytest.mark.integration

BUDGET = "24MiB"  # one 64^3 chunk per tile: 48 tiles for the 255 x 217 x 170 mouse


def _markers(output: Path) -> dict[str, int]:
    folder = output / PROGRESS_DIR / "level-0"
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.exists() else {}


def _tile_chunks(output: Path, tiles: list[str], chunk: tuple[int, ...]) -> dict[str, int]:
    """Modification times of the level-0 chunk files that the named tiles wrote."""
    times = {}
    for name in tiles:
        starts = [int(part.split("-")[0]) for part in name.split("_")]
        for path in (output / "0" / "c").glob("/".join(str(s // c) for s, c in zip(starts, chunk))):
            times[str(path)] = path.stat().st_mtime_ns
    return times


def _level_files(output: Path) -> dict[str, bytes]:
    """Every file of every level array (metadata and chunks), by relative path."""
    files = {}
    for level in sorted(p for p in output.iterdir() if p.is_dir() and p.name.isdigit()):
        for path in sorted(level.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(output))] = path.read_bytes()
    return files


def test_killed_warp_resumes_without_recomputing_and_matches_an_uninterrupted_run(prefect_server, mouse_registration, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.warp_volume import warp_volume
    from scalereg.omezarr import read_pyramid
    from scalereg.warp import plan_warp

    common = {
        "transform": [str(mouse_registration["transform"])],
        "moving": str(mouse_registration["moving"]),
        "reference": str(mouse_registration["fixed"]),
    }
    killed = tmp_path / "killed.ome.zarr"
    tiles = len(plan_warp(**common, output=str(killed), memory_budget=BUDGET).levels[0].blocks)
    assert tiles >= 24

    command = [str(Path(sys.executable).parent / "scalereg"), "warp", "--moving", common["moving"], "--reference", common["reference"],
               "--transform", common["transform"][0], "--out", str(killed), "--memory-budget", BUDGET]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(_markers(killed)) < 6 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        kill_command(process)  # the command, its flow process and its LocalCluster's workers
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    done = _markers(killed)
    assert 6 <= len(done) < tiles, f"{len(done)} of {tiles} tiles finished before the kill"
    layout = read_pyramid(str(killed))
    assert layout.attributes["status"]["status"] != "complete"
    chunk = tuple(layout.levels[0].chunks)
    written = _tile_chunks(killed, list(done), chunk)
    assert len(written) == len(done)  # one chunk per tile

    resumed = warp_volume(**common, output=str(killed), memory_budget=BUDGET)
    assert resumed["state"] == "resume"
    assert resumed["levels"][0]["skipped"] == len(done)
    assert _tile_chunks(killed, list(done), chunk) == written  # finished tiles were not rewritten

    uninterrupted = tmp_path / "uninterrupted.ome.zarr"
    warp_volume(**common, output=str(uninterrupted), memory_budget=BUDGET)
    expected, got = _level_files(uninterrupted), _level_files(killed)
    assert len(expected) > tiles and got.keys() == expected.keys()
    assert [name for name in expected if got[name] != expected[name]] == []
    assert read_pyramid(str(killed)).attributes["status"]["status"] == "complete"
