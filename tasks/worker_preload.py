"""Imported by each Dask worker of a local cluster as it starts (the ``preload`` of
``infra/clusters/local.yaml``): what every block task needs -- Prefect's task engine,
zarr and the conversion core -- so that the first task a worker runs does not wait
seconds for these imports.  A run started from the CLI starts its cluster while
Prefect's temporary server comes up, so the imports happen on a core that would
otherwise wait.  ANTs is not among them: the first registration step imports it, on
the workers that run one (a conversion alone never needs its ~100 MB)."""

import prefect.task_engine  # noqa: F401
import zarr  # noqa: F401

import scalereg.convert.run_block  # noqa: F401
import scalereg.pyramid.stream_block  # noqa: F401
import tasks.convert  # noqa: F401
