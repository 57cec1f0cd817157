#!/usr/bin/env bash
# Set up scalereg on a fresh machine: a virtual environment in .venv with every
# dependency at the versions in constraints.txt (tested together).  Idempotent:
# a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"scalereg needs Python 3.11, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24" 2>&1 | grep -v "is ignored" || true
stamp=.venv/.scalereg-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import scalereg, flows, tasks, prefect, prefect_dask, dask_jobqueue, zarr, ome_zarr, ants, xarray, boto3" \
        || { echo "bootstrap: install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import prefect, zarr; print("prefect", prefect.__version__, "zarr", zarr.__version__)'))"
