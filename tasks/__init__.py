"""Thin Prefect tasks over the scalereg core: retries, failure states, artifacts."""
