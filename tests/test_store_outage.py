"""The S3 endpoint goes away for a few seconds while a flow writes to the bucket: the
writes are retried and the run completes with the same data (the same level
checksums) as on local disk.  A store that stays away fails the run with one line."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from conftest import forget_s3_filesystems, phantom
from s3_server import ThrottlingProxy
from scalereg.errors import BAD_INPUT_STATE
from scalereg.omezarr import validate_pyramid
from scalereg.omezarr.create_pyramid_store import STATUS_KEY
from scalereg.storage import resolve_options

pytestmark = pytest.mark.integration

OPTIONS = dict(spacing=[1.0, 1.0, 1.0], orientation="asr", chunks=16, memory_budget="512KiB")


def _markers(server, prefix: str) -> int:
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return listing.get("KeyCount", 0)


def test_a_store_outage_mid_write_is_retried_and_the_output_matches_local(prefect_server, s3_env, tmp_path, monkeypatch):
    from flows.convert_volume import convert_volume

    server = s3_env
    volume = phantom((64, 96, 80), "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), volume)
    local = tmp_path / "local.ome.zarr"
    convert_volume(source=str(raw), output=str(local), **OPTIONS)

    output = f"s3://{server.bucket}/outage/brain.ome.zarr"
    with ThrottlingProxy(server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the flow and its workers write through the proxy
        forget_s3_filesystems()

        def outage_when_writing():
            deadline = time.monotonic() + 120
            while _markers(server, "outage/brain.ome.zarr/.scalereg-progress/") < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            proxy.outage(6)

        thread = threading.Thread(target=outage_when_writing, daemon=True)
        thread.start()
        result = convert_volume(source=str(raw), output=output, **OPTIONS)
        thread.join(timeout=30)
        assert proxy.outages == 1
    assert result["state"] == "new"
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    forget_s3_filesystems()
    remote = zarr.open_group(output, mode="r", storage_options=resolve_options(output))
    assert np.array_equal(remote["0"][:], volume)
    checksums = [level["checksum"] for level in remote.attrs[STATUS_KEY]["manifest"]["levels"]]
    expected = [level["checksum"] for level in zarr.open_group(str(local), mode="r").attrs[STATUS_KEY]["manifest"]["levels"]]
    assert checksums == expected and all(checksums)
    assert validate_pyramid(output, resolve_options(output)) == []


def test_a_store_that_stays_away_fails_the_run_with_one_line(prefect_server, s3_env, tmp_path, monkeypatch):
    from flows.convert_volume import convert_volume

    server = s3_env
    raw = tmp_path / "raw.zarr"
    zarr.save_array(str(raw), phantom((64, 64, 64), "uint16"))
    output = f"s3://{server.bucket}/gone/brain.ome.zarr"
    with ThrottlingProxy(server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        forget_s3_filesystems()

        def gone_for_good():  # after the first blocks: longer than every retry
            while _markers(server, "gone/brain.ome.zarr/.scalereg-progress/") < 1:
                time.sleep(0.05)
            proxy.outage(180)

        threading.Thread(target=gone_for_good, daemon=True).start()
        start = time.monotonic()
        state = convert_volume(source=str(raw), output=output, return_state=True, **OPTIONS)
        seconds = time.monotonic() - start
    assert state.is_failed() and state.name == BAD_INPUT_STATE, state
    assert "cannot reach the store's endpoint" in state.message and "gone/brain.ome.zarr" in state.message
    assert "still failing after the task's retries" in state.message and "\n" not in state.message
    assert seconds > 40  # the retries (2 + 10 + 30 s) were spent first
    status = zarr.open_group(output, mode="r", storage_options=resolve_options(output, {"endpoint_url": server.endpoint})).attrs[STATUS_KEY]
    assert status["status"] == "incomplete"
