"""Object storage against a real S3 HTTP endpoint on loopback (moto_server): options,
conversion in and out of a bucket, and every bad-input case with its message."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from conftest import forget_s3_filesystems, phantom
from s3_server import ThrottlingProxy
from scalereg.convert import convert_volume
from scalereg.errors import InputError
from scalereg.io import open_source
from scalereg.local_cache import cache_limits, local_copy
from scalereg.omezarr import read_pyramid, validate_pyramid
from scalereg.storage import check_settings, output_uri, resolve_options


def _nifti(path, shape=(40, 36, 32)):
    volume = phantom(shape)
    nib.save(nib.Nifti1Image(np.transpose(volume), np.diag([-0.05, -0.05, 0.05, 1.0])), str(path))
    return path


def _upload(server, local, key):
    server.client().upload_file(str(local), server.bucket, key)
    return f"s3://{server.bucket}/{key}"


def _secrets(server):
    return [server.writer["SecretAccessKey"], server.nobody["SecretAccessKey"]]


def test_options_come_from_settings_then_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    options = resolve_options("s3://bucket/x.zarr")
    assert options["endpoint_url"] == "http://127.0.0.1:9" and options["client_kwargs"] == {"region_name": "eu-west-2"}
    assert options["anon"] is False and "key" not in options and "secret" not in options
    given = resolve_options("s3://bucket/x.zarr", {"endpoint_url": "http://other:1", "anon": True, "region": "us-east-2"})
    assert given["endpoint_url"] == "http://other:1" and given["anon"] is True and given["client_kwargs"]["region_name"] == "us-east-2"
    monkeypatch.setenv("SCALEREG_S3_ANON", "1")
    assert resolve_options("s3://bucket/x.zarr")["anon"] is True
    assert resolve_options("/local/x.zarr") == {}
    with pytest.raises(InputError, match="credentials .*secret.* are not accepted"):
        check_settings({"endpoint_url": "http://x", "secret": "hunter2"})
    with pytest.raises(InputError, match="root of a bucket"):
        output_uri("s3://bucket/")
    assert output_uri("s3://bucket/run1/") == "s3://bucket/run1"


def test_convert_an_object_into_the_bucket_matches_local(s3_env, tmp_path):
    server = s3_env
    local_source = _nifti(tmp_path / "brain.nii.gz")
    source = _upload(server, local_source, "inputs/brain.nii.gz")
    remote_out = f"s3://{server.bucket}/outputs/brain.ome.zarr"
    local_out = tmp_path / "brain.ome.zarr"
    convert_volume(str(local_source), str(local_out), chunks=16, min_size=8)
    result = convert_volume(source, remote_out, chunks=16, min_size=8)
    assert result["state"] == "new" and len(result["levels"]) >= 2
    assert validate_pyramid(remote_out) == []
    remote, local = read_pyramid(remote_out), read_pyramid(str(local_out))
    assert remote.geometry == local.geometry and remote.levels == local.levels
    assert remote.attributes["status"]["status"] == "complete"
    for level in remote.levels:
        np.testing.assert_array_equal(zarr.open_array(f"{remote_out}/{level.path}", storage_options=resolve_options(remote_out))[:],
                                      zarr.open_array(str(local_out / level.path))[:])  # fmt: skip
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=server.bucket, Prefix="outputs/brain.ome.zarr/")["Contents"]]
    assert not any(".scalereg-progress" in k for k in keys), "block markers are removed when the output is complete"
    assert convert_volume(source, remote_out, chunks=16, min_size=8)["state"] == "complete"  # recognised as done


def _expect(match: str, uri: str, server, fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        fn(*args, **kwargs)
    message = str(caught.value)
    assert uri in message, message
    assert match in message, message
    assert "Traceback" not in message and "\n" not in message
    for secret in _secrets(server):
        assert secret not in message
    return message


def test_bad_inputs_are_named_and_explained(s3_env, tmp_path, monkeypatch):
    server = s3_env
    source = _upload(server, _nifti(tmp_path / "b.nii.gz", (24, 24, 24)), "bad/b.nii.gz")

    # a bucket that does not exist: as a source and as an output
    _expect("bucket does not exist", "s3://no-such-bucket/x.ome.zarr", server, read_pyramid, "s3://no-such-bucket/x.ome.zarr")
    _expect("bucket does not exist", "s3://no-such-bucket/out.ome.zarr", server, convert_volume, source, "s3://no-such-bucket/out.ome.zarr")
    # an object that is missing
    _expect("no such object", f"s3://{server.bucket}/bad/missing.nii.gz", server, open_source, f"s3://{server.bucket}/bad/missing.nii.gz")
    # an output at a bucket's root: refused before anything is written
    _expect("root of a bucket", f"s3://{server.bucket}", server, convert_volume, source, f"s3://{server.bucket}")
    assert "Contents" not in server.client().list_objects_v2(Bucket=server.bucket, Prefix="zarr.json")

    def as_user(key_id: str, secret: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        forget_s3_filesystems()

    # wrong credentials: an unknown key, and a known key with the wrong secret
    as_user("AKIAUNKNOWNKEY000000", server.writer["SecretAccessKey"])
    _expect("access key is not known", source, server, open_source, source)
    as_user(server.writer["AccessKeyId"], "not-the-secret")
    _expect("secret key does not match", source, server, open_source, source)
    # no permission: a real user whose policies allow nothing
    as_user(server.nobody["AccessKeyId"], server.nobody["SecretAccessKey"])
    _expect("access denied", source, server, open_source, source)
    _expect("access denied", f"s3://{server.bucket}/denied/out.ome.zarr", server, convert_volume, str(tmp_path / "b.nii.gz"), f"s3://{server.bucket}/denied/out.ome.zarr")

    # an endpoint nobody listens on: fails within seconds, naming the endpoint
    as_user(server.writer["AccessKeyId"], server.writer["SecretAccessKey"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    start = time.monotonic()
    message = _expect("cannot reach the store's endpoint", source, server, open_source, source)
    assert "127.0.0.1:9" in message and time.monotonic() - start < 60


def test_throttling_is_retried_then_reported(s3_env, tmp_path, monkeypatch):
    server = s3_env
    source = _upload(server, _nifti(tmp_path / "t.nii.gz", (24, 24, 24)), "throttle/t.nii.gz")
    # a few SlowDown answers are absorbed by the retries
    with ThrottlingProxy(server.endpoint, "throttle/t.nii.gz", times=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        forget_s3_filesystems()
        assert open_source(source).shape == (24, 24, 24)
        assert proxy.throttled == 2
    # a store that never stops throttling: a clear error after the retries
    with ThrottlingProxy(server.endpoint, "throttle/t.nii.gz") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        forget_s3_filesystems()
        _expect("throttling requests (SlowDown)", source, server, open_source, source)
        assert proxy.throttled > 2


def test_local_copies_are_pruned_least_recently_used_first(s3_env, tmp_path, monkeypatch):
    """Remote files copied for local-only readers stay under SCALEREG_CACHE_MAX: the least
    recently used go first, never one used within the keep time, nor the one just fetched."""
    uris = {}
    for name in "abc":
        (tmp_path / f"{name}.bin").write_bytes(os.urandom(100_000))
        uris[name] = _upload(s3_env, tmp_path / f"{name}.bin", f"cache/{name}.bin")
    monkeypatch.setenv("SCALEREG_CACHE_MAX", "250KB")  # room for two copies
    monkeypatch.setenv("SCALEREG_CACHE_KEEP_SECONDS", "60")
    copies = {name: Path(local_copy(uris[name])) for name in "ab"}
    now = time.time()
    os.utime(copies["a"].parent, (now - 300, now - 300))
    os.utime(copies["b"].parent, (now - 200, now - 200))
    copies["c"] = Path(local_copy(uris["c"]))  # over the limit: the least recently used goes
    assert not copies["a"].exists() and copies["b"].exists() and copies["c"].exists()
    assert copies["c"].read_bytes() == (tmp_path / "c.bin").read_bytes()
    assert Path(local_copy(uris["b"])) == copies["b"]  # a use marks it used: b is now the newest
    os.utime(copies["c"].parent, (now - 100, now - 100))
    assert Path(local_copy(uris["a"])).read_bytes() == (tmp_path / "a.bin").read_bytes()  # fetched again
    assert not copies["c"].exists() and copies["b"].exists()
    # copies used within the keep time stay, whatever the size
    monkeypatch.setenv("SCALEREG_CACHE_MAX", "1KB")
    local_copy(uris["c"])
    assert all(Path(local_copy(uris[name])).exists() for name in "abc")


@pytest.mark.parametrize(
    "name, value, message",
    [("SCALEREG_CACHE_MAX", "lots", "cannot read 'lots' as a size"), ("SCALEREG_CACHE_KEEP_SECONDS", "-1", "must be zero or more"),
     ("SCALEREG_CACHE_KEEP_SECONDS", "an hour", "is not a number of seconds")],
)
def test_bad_cache_limits_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message) as raised:
        cache_limits()
    assert str(raised.value).startswith(f"{name}: ")


@pytest.mark.parametrize("methods", [None, ("GET",)], ids=["every-request", "reads-only"])
def test_a_store_unavailable_while_zarr_metadata_is_read_is_named_as_such(s3_env, tmp_path, monkeypatch, methods):
    """503s for a Zarr's metadata are the store's failure, retried by tasks: not "no Zarr
    metadata under this prefix" (fsspec's isfile says False for any failure) nor
    "unreadable metadata" (a read the store cut short)."""
    from scalereg.storage_errors import StoreUnavailable

    server = s3_env
    zarr.save_array(str(tmp_path / "z.zarr"), np.arange(8**3, dtype="uint16").reshape(8, 8, 8))
    for path in sorted((tmp_path / "z.zarr").rglob("*")):
        if path.is_file():
            _upload(server, path, f"busy/z.zarr/{path.relative_to(tmp_path / 'z.zarr')}")
    source = f"s3://{server.bucket}/busy/z.zarr"
    with ThrottlingProxy(server.endpoint, "busy/z.zarr/zarr.json", methods=methods) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        forget_s3_filesystems()
        with pytest.raises(StoreUnavailable) as caught:
            open_source(source)
        message = str(caught.value)
        assert "busy/z.zarr" in message and "\n" not in message, message
        assert "no Zarr metadata" not in message and "unreadable" not in message, message
        assert proxy.throttled > 0
    forget_s3_filesystems()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    assert open_source(source).shape == (8, 8, 8)  # the store back: the same source opens
