"""The whole pipeline (register-brain flow) with sources and outputs in a bucket on a real
S3 endpoint (moto_server on loopback): the same outputs as on local disk, and no
credential anywhere in what the run leaves behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import s3fs
import zarr

from conftest import QUICK_MOUSE_SCHEDULE, forget_s3_filesystems
from scalereg.errors import BAD_INPUT_STATE
from scalereg.omezarr import read_pyramid, validate_pyramid
from scalereg.storage import resolve_options

pytestmark = pytest.mark.integration


def _save_aws_credentials_block(name: str, credentials: dict[str, str], endpoint: str) -> None:
    """An AwsCredentials block as prefect-aws saves it (same slug and fields), without
    needing that package installed."""
    from typing import Any, Optional

    from prefect.blocks.core import Block
    from pydantic import SecretStr

    class AwsCredentials(Block):
        _block_type_slug = "aws-credentials"
        aws_access_key_id: Optional[str] = None
        aws_secret_access_key: Optional[SecretStr] = None
        region_name: Optional[str] = None
        aws_client_parameters: dict[str, Any] = {}

    AwsCredentials(
        aws_access_key_id=credentials["AccessKeyId"], aws_secret_access_key=SecretStr(credentials["SecretAccessKey"]),
        region_name="us-east-1", aws_client_parameters={"endpoint_url": endpoint},
    ).save(name, overwrite=True)  # fmt: skip


def _prefect_records() -> list[str]:
    """Every artifact, log line and flow-run parameter set the Prefect server holds, as text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        logs = client.read_logs()
        runs = client.read_flow_runs()
    texts = [f"{a.key} {a.description} {a.data}" for a in artifacts]
    texts += [log.message for log in logs]
    texts += [json.dumps(run.parameters, default=str) for run in runs]
    return texts


def test_register_brain_in_a_bucket_equals_local_and_leaks_no_credential(prefect_server, s3_env, sample_volumes, mouse_registration, tmp_path, caplog, monkeypatch):
    from flows.register_brain import register_brain

    # one ITK thread per worker: ANTs then gives the same result on every run (with more,
    # the order of floating-point sums varies), so "identical to local" can be asserted
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    server = s3_env
    bucket = server.bucket
    mouse = sample_volumes["mouse"]
    moved = mouse_registration["tmp"] / "moved.zarr"  # a plain Zarr array: converted by the flow
    fs = s3fs.S3FileSystem(**resolve_options(f"s3://{bucket}/x"))
    fs.put_file(str(mouse.path), f"{bucket}/brain-src/mouse.tif")  # a TIFF object: staged on the workers
    fs.put(str(moved), f"{bucket}/brain-src/moved.zarr", recursive=True)
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps(QUICK_MOUSE_SCHEDULE))
    # the run gets its credentials and endpoint from a Prefect block only: the flow and
    # the Dask workers it starts must find them without any AWS_* in the environment
    _save_aws_credentials_block("scalereg-test-bucket", server.writer, server.endpoint)
    for name in server.env():
        monkeypatch.delenv(name)
    forget_s3_filesystems()
    geometry = {"spacing": list(mouse.spacing), "orientation": mouse.orientation}
    common = dict(registration={"schedule": str(schedule)}, chunks=64, aws_credentials_block="scalereg-test-bucket")
    sources = dict(fixed={"uri": f"s3://{bucket}/brain-src/mouse.tif", **geometry}, moving={"uri": f"s3://{bucket}/brain-src/moved.zarr", **geometry})

    out = f"s3://{bucket}/brainrun"
    result = register_brain(**sources, out=out, **common)
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ, "the block's credentials are set for the run only"
    local_out = tmp_path / "brainrun"
    local = register_brain(fixed={"uri": str(mouse.path), **geometry}, moving={"uri": str(moved), **geometry}, out=str(local_out), **common)
    assert {s["stage"]: s["state"] for s in result["stages"]} == {s["stage"]: s["state"] for s in local["stages"]}

    # the same pyramids, bit for bit, and the same registration
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)  # for the checks below
    forget_s3_filesystems()
    options = resolve_options(out)
    for name in ("fixed.ome.zarr", "moving.ome.zarr", "warped.ome.zarr"):
        assert validate_pyramid(f"{out}/{name}") == [], name
        remote_layout, local_layout = read_pyramid(f"{out}/{name}"), read_pyramid(str(local_out / name))
        assert remote_layout.levels == local_layout.levels and remote_layout.geometry == local_layout.geometry
        assert remote_layout.attributes["status"]["status"] == "complete"
        for level in remote_layout.levels:
            remote = zarr.open_array(f"{out}/{name}/{level.path}", mode="r", storage_options=options)[:]
            np.testing.assert_array_equal(remote, zarr.open_array(str(local_out / name / level.path), mode="r")[:], err_msg=f"{name}/{level.path}")
    manifest = json.loads(fs.cat_file(f"{bucket}/brainrun/transform/manifest.json"))
    local_manifest = json.loads((local_out / "transform" / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"]] == ["01-rigid-200um", "02-affine-200um", "03-syn-100um"]
    assert [s["after"] for s in manifest["steps"]] == [s["after"] for s in local_manifest["steps"]]
    assert manifest["outputs"] == local_manifest["outputs"]
    for relative in ("forward/affine.mat", "forward/warp.nii.gz", "inverse/inverse_warp.nii.gz", "steps/03-syn-100um/qc.png"):
        assert fs.exists(f"{bucket}/brainrun/transform/{relative}"), relative
    assert fs.cat_file(f"{bucket}/brainrun/transform/forward/affine.mat") == (local_out / "transform" / "forward" / "affine.mat").read_bytes()
    assert "warped.ome.zarr" in fs.cat_file(f"{bucket}/brainrun/report.md").decode()

    # an unknown block is bad input, named
    state = register_brain(**sources, out=out, return_state=True, **{**common, "aws_credentials_block": "no-such-block"})
    assert state.is_failed() and state.name == BAD_INPUT_STATE and "no-such-block" in state.message

    # run again: everything is recognised as done from what is in the bucket
    again = register_brain(**sources, out=out, **common)
    stages = {s["stage"]: s["state"] for s in again["stages"]}
    assert stages["convert fixed"].startswith("skipped") and stages["register"].startswith("skipped") and stages["warp"].startswith("skipped")

    # an output at the bucket's root is refused before anything is written there
    state = register_brain(**sources, out=f"s3://{bucket}", return_state=True, **common)
    assert state.is_failed() and state.name == BAD_INPUT_STATE and f"s3://{bucket}" in state.message and "root of a bucket" in state.message
    assert not [p for p in fs.ls(bucket, refresh=True) if fs.isfile(p)], "no object at the bucket's root"

    # no credential in anything written: objects (metadata, manifest, records, report), artifacts, logs, parameters
    credentials = [server.writer["SecretAccessKey"], server.writer["AccessKeyId"]]
    written = fs.find(f"{bucket}/brainrun")
    assert len(written) > 20
    for path in written:
        content = fs.cat_file(path)
        assert not any(c.encode() in content for c in credentials), path
    for text in _prefect_records() + [caplog.text]:
        assert not any(c in text for c in credentials)
