"""Thin Prefect tasks over the scalereg core: retries, failure states, artifacts."""

from scalereg.logs import install_masking as _install_masking

_install_masking()  # every log record of a process that runs flows or tasks has its secrets masked
