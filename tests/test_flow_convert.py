"""The convert-volume flow against a real Prefect server, its tasks on a Dask LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import phantom
from scalereg.errors import BAD_INPUT_STATE
from scalereg.omezarr import read_pyramid, validate_pyramid
from scalereg.omezarr.create_pyramid_store import STATUS_KEY

pytestmark = pytest.mark.integration


def _artifacts(key_prefix: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key_prefix)))


def test_flow_writes_the_pyramid_and_artifacts(prefect_server, tmp_path):
    from flows.convert_volume import convert_volume

    volume = phantom((48, 80, 72), "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp_path / "flowbrain.ome.zarr"
    result = convert_volume(
        source=str(raw), output=str(out), spacing=[2.0, 1.0, 1.0], orientation="asr", chunks=16, memory_budget="1MiB"
    )
    layout = read_pyramid(str(out))
    assert result["state"] == "new"
    assert [row["level"] for row in result["levels"]] == list(range(len(layout.levels)))
    assert sum(row["blocks"] for row in result["levels"]) > len(layout.levels)  # really block by block
    assert validate_pyramid(str(out)) == []
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)

    artifacts = _artifacts("flowbrain-")
    tables = {a.key: a for a in artifacts if a.type == "table"}
    for level in layout.levels:
        table = tables[f"flowbrain-level-{level.path}"]
        assert "x".join(map(str, level.shape)).replace("x", " x ") in str(table.data)
        assert "seconds" in str(table.data) and "bytes" in str(table.data)
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and progress[0].data == pytest.approx(100.0)
    assert any(a.type == "markdown" and "flowbrain" in a.key for a in artifacts)

    # the same conversion again: recognised as complete, nothing rewritten
    again = convert_volume(source=str(raw), output=str(out), spacing=[2.0, 1.0, 1.0], orientation="asr", chunks=16, memory_budget="1MiB")
    assert again["state"] == "complete"


def test_bad_voxels_fail_the_flow_once_with_a_clear_message(prefect_server, tmp_path):
    from flows.convert_volume import convert_volume

    volume = phantom((32, 32, 32), "float32")
    volume[30, 1, 2] = np.inf
    raw = tmp_path / "bad.zarr"
    zarr.save_array(str(raw), volume)
    out = tmp_path / "bad.ome.zarr"
    state = convert_volume(
        source=str(raw), output=str(out), spacing=[1.0, 1.0, 1.0], chunks=16, memory_budget="256KiB", return_state=True
    )
    assert state.is_failed()
    assert state.name == BAD_INPUT_STATE
    assert "NaN/Inf" in state.message and str(raw) in state.message
    assert zarr.open_group(str(out), mode="r").attrs[STATUS_KEY]["status"] == "incomplete"
