"""Prefect flows of scalereg; each module is runnable as a script."""
