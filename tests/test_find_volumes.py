"""What the sweep finds under a directory or an s3:// prefix (moto_server for S3)."""

from __future__ import annotations

import pytest

from scalereg.errors import InputError
from scalereg.find_volumes import find_volumes


def test_find_volumes_lists_one_volume_per_file_or_zarr_directory(tmp_path):
    for name in ("a.tif", "b.nii.gz", "notes.txt", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "c.ome.zarr").mkdir()
    (tmp_path / "slices").mkdir()  # a directory that is not a Zarr: not a volume here
    found = {v.name: v.uri for v in find_volumes(str(tmp_path))}
    assert found == {"a": str(tmp_path / "a.tif"), "b": str(tmp_path / "b.nii.gz"), "c": str(tmp_path / "c.ome.zarr")}
    assert find_volumes(str(tmp_path), min_age_seconds=3600) == []  # all just written: maybe still being copied
    (tmp_path / "a.nrrd").write_bytes(b"x")
    with pytest.raises(InputError, match="two volumes are named 'a'"):
        find_volumes(str(tmp_path))
    with pytest.raises(InputError, match="no such directory"):
        find_volumes(str(tmp_path / "missing"))


def test_find_volumes_under_an_s3_prefix(s3_env):
    server = s3_env
    client = server.client()
    for key in ("in/a.tif", "in/b.nii.gz", "in/c.ome.zarr/zarr.json", "in/c.ome.zarr/0/zarr.json", "in/notes.txt", "in/deeper/d.tif"):
        client.put_object(Bucket=server.bucket, Key=key, Body=b"x")
    found = {v.name: v.uri for v in find_volumes(f"s3://{server.bucket}/in/")}
    prefix = f"s3://{server.bucket}/in"
    assert found == {"a": f"{prefix}/a.tif", "b": f"{prefix}/b.nii.gz", "c": f"{prefix}/c.ome.zarr"}
    assert find_volumes(f"s3://{server.bucket}/in", min_age_seconds=3600) == list(find_volumes(prefix))  # objects are whole once listed
    with pytest.raises(InputError):
        find_volumes(f"s3://{server.bucket}/nothing-here")
