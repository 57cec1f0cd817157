"""Choose the Dask cluster a flow's tasks run on (the one place that does)."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from prefect.settings import PREFECT_API_URL
from prefect_dask import DaskTaskRunner

from scalereg.convert.plan_conversion import DEFAULT_MEMORY_BUDGET as DEFAULT_CONVERSION_BUDGET
from scalereg.errors import InputError
from scalereg.budgets import REGISTRATION_BUDGET as DEFAULT_REGISTRATION_BUDGET
from scalereg.units import format_bytes, parse_bytes
from scalereg.warp import DEFAULT_WARP_BUDGET

PROFILES_DIR = Path(__file__).resolve().parent.parent / "infra" / "clusters"
WORKER_START_TIMEOUT = 300  # seconds for scaled workers (batch jobs) to connect
DEFAULT_LOCAL: dict[str, Any] = {
    "cluster_class": "distributed.LocalCluster",
    "cluster_kwargs": {
        "n_workers": max(1, os.cpu_count() or 1),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
        "preload": ["tasks.worker_preload"],
    },
}


def cluster_spec(cluster: str | None) -> dict[str, Any]:
    """The cluster profile ``cluster`` names: ``{"address": ...}`` or the keys
    cluster_class, cluster_kwargs and optionally adapt_kwargs or scale_kwargs.

    ``cluster`` is ``None``/``"local"`` (a LocalCluster, one worker per core), a
    scheduler address (``tcp://host:8786``), a profile name from infra/clusters/
    (e.g. ``"slurm"``), or a path to such a YAML file.
    """
    if cluster in (None, "", "local"):
        path = PROFILES_DIR / "local.yaml"
        return _load(path) if path.exists() else DEFAULT_LOCAL
    if "://" in cluster:
        return {"address": cluster}
    path = Path(cluster)
    if not path.suffix:
        path = PROFILES_DIR / f"{cluster}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise InputError("cluster", f"unknown cluster {cluster!r}: use one of {known}, a tcp:// address or a YAML file")
    return _load(path)


def _load(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(str(path), f"not a readable cluster profile: {(str(error).splitlines() or [type(error).__name__])[0]}") from None
    if not isinstance(spec, dict):
        raise InputError(str(path), "a cluster profile is a mapping (cluster_class, cluster_kwargs, ...)")
    unknown = set(spec) - {"cluster_class", "cluster_kwargs", "adapt_kwargs", "scale_kwargs", "address"}
    if unknown:
        raise InputError(str(path), f"unknown keys {sorted(unknown)} in cluster profile")
    return spec


# Clusters started ahead of their flow (`prestart_cluster`), by profile name: the
# manager that started it and its scheduler address (or the error it met).
_PRESTARTED: dict[str, tuple[Any, Future]] = {}


def prestart_cluster(cluster: str | None) -> None:
    """Start the cluster ``cluster`` names in a background thread, for the next
    `dask_cluster` of the same name in this process to take over (and close, as ever).

    The CLI calls this while Prefect's temporary server starts (seconds of imports in
    a process of its own): the workers start and import what block tasks need
    meanwhile, on a core that would otherwise wait.  Workers are told this process's
    Prefect API (PREFECT_API_URL, set before).  Addresses of running schedulers, and
    profiles that do not load, are left to the flow (which reports them)."""
    key = cluster or "local"
    try:
        spec = cluster_spec(cluster)
    except InputError:
        return
    if "address" in spec or key in _PRESTARTED:
        return
    manager = _started_cluster(spec, cluster)
    address: Future = Future()

    def start() -> None:
        try:
            address.set_result(manager.__enter__())
        except BaseException as error:  # noqa: BLE001 - handed to whoever takes the cluster
            address.set_exception(error)

    threading.Thread(target=start, name="dask-cluster-prestart", daemon=True).start()
    _PRESTARTED[key] = (manager, address)


def close_prestarted() -> None:
    """Close clusters started ahead that no flow took over (the run stopped before)."""
    while _PRESTARTED:
        _, (manager, address) = _PRESTARTED.popitem()
        if address.exception() is None:
            manager.__exit__(None, None, None)


@contextmanager
def dask_cluster(cluster: str | None = None) -> Iterator[str]:
    """Start the cluster ``cluster`` names (or connect to an address) and yield its
    scheduler address; a cluster started here is closed on exit (for dask-jobqueue
    clusters that cancels its batch jobs).

    A top-level flow enters this once and hands the address to the stage flows it
    calls, so that one run uses one cluster.  The profile's ``scale_kwargs`` go to
    ``cluster.scale`` (a fixed number of workers or jobs), its ``adapt_kwargs`` to
    ``cluster.adapt``.  A cluster `prestart_cluster` started for this profile is
    taken over instead of starting another.
    """
    taken = _PRESTARTED.pop(cluster or "local", None)
    if taken is not None:
        manager, address = taken
        started = address.result()  # raises what starting it raised
        try:
            yield started
        finally:
            manager.__exit__(None, None, None)
        return
    with _started_cluster(cluster_spec(cluster), cluster) as address:
        yield address


@contextmanager
def _started_cluster(spec: dict[str, Any], cluster: str | None) -> Iterator[str]:
    if "address" in spec:
        yield spec["address"]
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster_class = spec.get("cluster_class", "distributed.LocalCluster")
    if isinstance(cluster_class, str):
        module, _, name = cluster_class.rpartition(".")
        cluster_class = getattr(importlib.import_module(module), name)
    # Kept for the cluster's whole life, not just its construction: a LocalCluster
    # starts its workers in the constructor, but a batch-system cluster submits jobs
    # at scale()/adapt() time and again whenever adapt() asks for more, and sbatch
    # hands each job the submitting process's environment as it is then.
    with _shared_prefect_api():
        instance = cluster_class(**spec.get("cluster_kwargs", {}))
        try:
            if spec.get("scale_kwargs"):
                instance.scale(**spec["scale_kwargs"])
                # jobs take a few seconds to start: wait, so that the flow sizes its
                # batches for the workers it will have (and a queue that never starts
                # them fails here, with a message, not somewhere in a task)
                try:
                    instance.wait_for_workers(len(instance.worker_spec), timeout=WORKER_START_TIMEOUT)
                except TimeoutError:
                    raise RuntimeError(
                        f"cluster {cluster!r}: {len(instance.worker_spec)} workers asked for, "
                        f"{len(instance.scheduler_info.get('workers', {}))} started within {WORKER_START_TIMEOUT} s "
                        "(for SLURM: check squeue and the job logs)"
                    ) from None
            if spec.get("adapt_kwargs"):
                instance.adapt(**spec["adapt_kwargs"])
            yield instance.scheduler_address
        finally:
            instance.close()


@contextmanager
def _shared_prefect_api() -> Iterator[None]:
    """Point worker processes started here at this process's Prefect API, until exit
    (when the variable's previous value, or its absence, is restored).

    Workers inherit the environment, not Prefect's in-process settings: without
    PREFECT_API_URL in the environment every Dask worker would start a temporary
    server of its own (seconds each, ~200 MB) and its task runs would not reach the
    flow's server.
    """
    url = PREFECT_API_URL.value()
    if not url:  # a flow run from Python on Prefect's own temporary server
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the one this process already uses (one per process)
        server.start()
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Flow runs started inside send no heartbeats.  Prefect ends every flow run by
    joining its heartbeat thread, which sleeps in one-second steps: up to a second
    lost per flow run, five per register-brain run.  Used for subflows, which run in
    their parent's process, whose own heartbeats (sent by the thread started before
    this) already tell the server that the process is alive; and by the CLI for a run
    on its temporary server, which nothing else watches and which ends with the run."""
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def runner_for(address: str) -> DaskTaskRunner:
    """A task runner that submits to the running cluster at ``address``."""
    return DaskTaskRunner(address=address)


def run_on_workers(function: Callable[[], Any]) -> None:
    """Have every worker of the running flow's Dask cluster call ``function`` now, in
    parallel, without waiting for it: an import ahead of tasks that run one after
    another and would otherwise each pay it on whichever worker they land
    (registration steps and ANTs: about a second each time).  A no-op off a Dask task
    runner."""
    from distributed import fire_and_forget
    from prefect.context import FlowRunContext

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if not isinstance(runner, DaskTaskRunner):
        return
    client = runner.client
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    fire_and_forget([client.submit(function, workers=[address], allow_other_workers=False, pure=False) for address in workers])


AUTO = "auto"  # a memory budget sized from the cluster's workers

# stage -> (default budget without a memory limit, share of a task's worker memory for
# "auto", whether "auto" stays at most the default).  The planners' estimates cover
# arrays, not the interpreter and libraries, hence shares below one.  Conversion and
# warp budgets set tile sizes; the registration budget decides which levels fit.
STAGE_BUDGETS: dict[str, tuple[str, float, bool]] = {
    "conversion": (DEFAULT_CONVERSION_BUDGET, 0.5, True),
    "registration": (DEFAULT_REGISTRATION_BUDGET, 0.75, False),
    "warp": (DEFAULT_WARP_BUDGET, 0.5, True),
}


@dataclass(frozen=True)
class ClusterCapacity:
    """What the connected workers offer a task: the flows size batches and memory
    budgets from it."""

    threads: int
    memory_per_task: int | None  # the smallest worker's memory_limit / threads; None: no limit

    def memory_budget(self, requested: str | None, stage: str) -> str:
        """The budget ``stage``'s planner gets (see `STAGE_BUDGETS`): ``requested``
        checked against the workers, or for ``"auto"`` (or None) the stage's share of a
        task's part of worker memory (capped at the stage's default where the budget
        only sets a tile size: larger tiles gain little).

        A budget over a task's part of a worker is refused: the planner would size
        tasks that the worker's nanny kills (or that swap) instead of refusing cleanly.
        """
        default, share, capped = STAGE_BUDGETS[stage]
        if requested in (None, "", AUTO):
            if self.memory_per_task is None:
                return default
            budget = int(share * self.memory_per_task)
            if capped:
                budget = min(budget, parse_bytes(default))
            return format_bytes(budget).replace(" ", "")
        what = f"{stage} memory budget"
        size = parse_bytes(requested, what)
        if self.memory_per_task is not None and size > self.memory_per_task:
            raise InputError(
                what,
                f"{requested} is more than a task gets on this cluster's workers ({format_bytes(self.memory_per_task)}: "
                f"memory limit / threads of the smallest worker); lower it, or use 'auto'",
            )
        return requested


def cluster_capacity(address: str) -> ClusterCapacity:
    """Threads and per-task memory of the workers connected to the scheduler now (at
    least one thread: an adaptive cluster may not have started its workers yet)."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    threads = sum(w.get("nthreads", 1) for w in workers)
    shares = [w["memory_limit"] // max(1, w.get("nthreads", 1)) for w in workers if w.get("memory_limit")]
    unlimited = any(not w.get("memory_limit") for w in workers)
    return ClusterCapacity(threads=max(1, threads), memory_per_task=None if unlimited or not shares else min(shares))


def run_stage_on_cluster(
    inner_flow: Any, cluster: str | None, stage: str, parameters: dict[str, Any], output: str, inputs: list[tuple[str, Any]], tasks_per_level: bool = True
) -> Any:
    """What a stage flow run alone does around its inner flow: confine the output
    parameter ``output``, keep it apart from ``inputs`` ((role, path) pairs; before its
    lock file is made beside it) and take its lock (held until the end), start the cluster,
    size ``memory_budget`` (and, for pyramid writers, the batches) from its workers,
    run ``inner_flow`` on it, and return its result or its failure (bad input, or an
    output another run is writing, as one line)."""
    from prefect.states import Failed

    from flows.outputs import checked_output, lock_outputs
    from scalereg.errors import BAD_INPUT_STATE
    from scalereg.output_rules import check_apart

    parameters = dict(parameters)
    try:
        cluster_spec(cluster)  # a profile that does not load fails here, as bad input
        given, parameters[output] = parameters[output], checked_output(parameters[output])
        check_apart(parameters[output], inputs, subject=given if given != parameters[output] else None)  # named as given
        locks = lock_outputs(parameters[output])  # before the cluster: a refused run costs nothing
    except InputError as error:
        return Failed(name=BAD_INPUT_STATE, message=str(error))
    with locks, dask_cluster(cluster) as address:
        capacity = cluster_capacity(address)
        try:
            parameters["memory_budget"] = capacity.memory_budget(parameters["memory_budget"], stage)
        except InputError as error:
            return Failed(name=BAD_INPUT_STATE, message=str(error))
        if tasks_per_level:
            parameters["tasks_per_level"] = 4 * capacity.threads
        with without_flow_heartbeats():
            state = inner_flow.with_options(task_runner=runner_for(address))(**parameters, return_state=True)
    if state.is_failed():
        return Failed(name=state.name, message=state.message)
    return state.result()
