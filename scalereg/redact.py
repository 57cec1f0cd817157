"""Secrets never leave scalereg: URLs with credentials are refused, and text that goes
out (errors, logs, artifacts, metadata) is masked on the way.

Credentials belong in the environment (boto3's chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role) or a Prefect
AwsCredentials block, never in a URL: a URL is a parameter, and parameters are
recorded by Prefect, shown in the UI, written into manifests and printed in messages.
So `refuse_url_credentials` turns ``s3://KEY:SECRET@bucket/x`` (and pre-signed query
strings) away with the URL masked, and `mask_secrets` masks, in any text, the user-info
part of URLs, pre-signed signatures and the values of secret environment variables
(for the exception texts of libraries that might echo them).
"""

from __future__ import annotations

import os
import re

from scalereg.errors import InputError

MASK = "***"
# scheme://user[:password]@host -- the user-info of any URL
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")
# the query parameters of pre-signed URLs (S3 signature versions 2 and 4, GCS)
_SIGNED = re.compile(r"(?i)(?P<name>\b(?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential)|signature|awsaccesskeyid))=(?P<value>[^&\s'\"]+)")
# environment variables whose values are secrets, wherever they would appear
_SECRET_VARIABLES = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)|^AWS_ACCESS_KEY_ID$")
_SHORTEST_SECRET = 8  # shorter values are too likely to occur by chance (and are no secret)
# S3 bucket names (AWS's rules, which MinIO and Ceph follow): 3-63 lower-case letters, digits, dots, hyphens
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


# a bucket URL whose "bucket" holds a colon: KEY:SECRET@bucket with a "/" in the secret
_BUCKET_COLON = re.compile(r"(?i)(?P<scheme>\b(?:s3a?|gs|gcs)://)(?P<userinfo>[^/\s'\"]*:[^\s'\"]*@|[^/\s'\"@]*:[^/\s'\"@]*)")


def has_url_credentials(text: str) -> bool:
    text = str(text)
    return bool(_USERINFO.search(text) or _SIGNED.search(text) or _BUCKET_COLON.search(text))


def mask_url(text: str) -> str:
    """``text`` with every URL's user-info and pre-signed signature masked."""
    masked = _BUCKET_COLON.sub(lambda m: m["scheme"] + (f"{MASK}:{MASK}@" if m["userinfo"].endswith("@") else f"{MASK}:{MASK}"), str(text))
    masked = _USERINFO.sub(lambda m: m["scheme"] + (f"{MASK}:{MASK}@" if ":" in m["userinfo"] else f"{MASK}@"), masked)
    return _SIGNED.sub(lambda m: f"{m['name']}={MASK}", masked)


def mask_secrets(text: str) -> str:
    """``text`` with URL credentials and the values of this process's secret
    environment variables (AWS_SECRET_ACCESS_KEY, tokens, passwords) masked."""
    masked = mask_url(text)
    for name, value in os.environ.items():
        if len(value) >= _SHORTEST_SECRET and _SECRET_VARIABLES.search(name) and value in masked:
            masked = masked.replace(value, MASK)
    return masked


def refuse_url_credentials(uri: str, subject: str | None = None) -> str:
    """``uri`` unchanged, or an InputError naming it masked when it carries credentials."""
    text = str(uri)
    if has_url_credentials(text):
        raise InputError(
            subject or mask_url(text),
            (f"{mask_url(text)}: " if subject else "")
            + "credentials in a URL are refused (a URL is recorded and shown wherever it goes): give them through the "
            "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE), an instance role or a Prefect AwsCredentials block",
        )
    return text


def check_bucket_name(uri: str) -> None:
    """An InputError naming ``uri`` when its bucket cannot be an S3 bucket's name."""
    scheme, _, rest = str(uri).partition("://")
    if scheme.lower() not in ("s3", "s3a"):
        return
    bucket = rest.split("/", 1)[0]
    if not _BUCKET.match(bucket) or ".." in bucket or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket):
        raise InputError(
            mask_url(uri),
            f"{bucket!r} is not a valid bucket name (3-63 characters: lower-case letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit)",
        )
