"""S3 credentials from a Prefect AwsCredentials block, for one flow run.

The core never sees a block: it reads credentials through boto3's chain.  So the
block's fields are put in this process's environment for the run (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL), where the flow and the Dask workers it starts (LocalCluster
processes, SLURM jobs through sbatch) find them; they are never task parameters.
Workers of an already running cluster (``tcp://``) need the credentials in their own
environment.  Read by block type slug, so the prefect-aws package is not required.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from scalereg.errors import InputError

BLOCK_TYPE = "aws-credentials"
_ENVIRONMENT = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "profile_name": "AWS_PROFILE",
    "region_name": "AWS_DEFAULT_REGION",
}


def read_aws_credentials(block_name: str | None) -> dict[str, str]:
    """The AwsCredentials block ``block_name`` as environment variables (none for an
    empty name); an unknown name is an InputError."""
    if not block_name:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            data = client.read_block_document_by_name(name=block_name, block_type_slug=BLOCK_TYPE, include_secrets=True).data
    except ObjectNotFound:
        raise InputError(f"aws_credentials_block={block_name}", "no AwsCredentials block with this name on the Prefect server") from None
    values = {env: _plain(data.get(field)) for field, env in _ENVIRONMENT.items()}
    values["AWS_ENDPOINT_URL"] = _plain((data.get("aws_client_parameters") or {}).get("endpoint_url"))
    return {k: v for k, v in values.items() if v}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment until exit, when the previous values
    (or their absence) are restored."""
    if not values:
        yield
        return
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _forget_filesystems()
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_filesystems()


def _plain(value: object) -> str | None:
    if value is None:
        return None
    secret = getattr(value, "get_secret_value", None)  # SecretStr, when the block class is installed
    return str(secret() if secret else value)


def _forget_filesystems() -> None:
    # s3fs keeps one filesystem per set of options, with the credentials it found then
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
