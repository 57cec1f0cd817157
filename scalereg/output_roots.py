"""Confine outputs to configured roots (local directories and s3:// prefixes).

A deployment lets anyone who can open the Prefect UI choose an output path; the
worker then writes there with its own permissions.  ``SCALEREG_OUTPUT_ROOTS``
(separated by ``:`` or ``,``: ``/data/out:s3://lab/registrations``) says where such
runs may write.  A path is resolved first (``..`` and symlinks for local paths, ``..``
segments for URIs), so neither can lead out of a root; a relative path is taken
relative to the first local root.  Without the variable, outputs are not confined
(Python and CLI use on one's own machine).
"""

from __future__ import annotations

import os
import posixpath
import re

from scalereg.errors import InputError
from scalereg.storage import is_remote

ENVIRONMENT_VARIABLE = "SCALEREG_OUTPUT_ROOTS"


def output_roots(text: str | None = None) -> list[str]:
    """The configured roots (from ``text``, else the environment), each resolved."""
    text = os.environ.get(ENVIRONMENT_VARIABLE, "") if text is None else text
    # split on ',' and on ':' except the one in "s3://"
    parts = [p.strip() for p in re.split(r",|:(?!//)", text) if p.strip()]
    roots = []
    for part in parts:
        if is_remote(part):
            roots.append(_resolve_uri(part, part))
        elif not os.path.isabs(os.path.expanduser(part)):
            raise InputError(ENVIRONMENT_VARIABLE, f"root {part!r} is not an absolute path or an s3:// prefix")
        else:
            roots.append(os.path.realpath(os.path.expanduser(part)))
    return roots


def confine_output(uri: str | os.PathLike, roots: list[str] | None = None, subject: str = "output") -> str:
    """``uri`` resolved, if it lies under one of ``roots`` (default: the configured
    ones); with no roots configured, ``uri`` unchanged.  Else an InputError."""
    text = os.fspath(uri)
    roots = output_roots() if roots is None else roots
    if not roots:
        return text
    if is_remote(text):
        resolved = _resolve_uri(text, subject)
    else:
        local_roots = [r for r in roots if not is_remote(r)]
        path = os.path.expanduser(text.removeprefix("file://"))
        if not os.path.isabs(path) and local_roots:
            path = os.path.join(local_roots[0], path)
        resolved = os.path.realpath(path)
    for root in roots:
        if resolved == root or resolved.startswith(root.rstrip("/") + "/"):
            if resolved == root:
                raise InputError(subject, f"{text!r} is an output root itself; give a directory under it")
            return resolved
    raise InputError(subject, f"{text!r} resolves to {resolved!r}, outside the output roots ({', '.join(roots)}; {ENVIRONMENT_VARIABLE})")


def _resolve_uri(uri: str, subject: str) -> str:
    scheme, _, rest = uri.partition("://")
    if scheme.lower() not in ("s3", "s3a"):
        raise InputError(subject, f"{uri!r}: only local paths and s3:// URIs can be outputs here")
    # '..' is literal in an S3 key, but fsspec and people read it as a parent: refuse it.
    if ".." in rest.split("/"):
        raise InputError(subject, f"{uri!r} contains a '..' segment")
    return f"s3://{posixpath.normpath('/' + rest).lstrip('/')}"
