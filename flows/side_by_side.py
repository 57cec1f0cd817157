"""Run independent stage flows of one run side by side, and stop the others when one fails.

A top-level flow's independent stages (register-brain's fixed and moving conversions)
share its Dask cluster.  One conversion alone leaves workers idle wherever it has fewer
blocks than the cluster has threads (its coarse levels; every level waits for its last
block) and while its driver plans and publishes artifacts; side by side, each fills the
other's gaps.  That matters on a cluster of many workers; on two workers that both keep
busy it made no measurable difference (benchmarks/overhead.py: 15.4 s for both
conversions side by side, 15.5 s one after the other).  Each stage flow runs in a thread
of its own with a copy of the caller's Prefect context, so that it is a child run of
the caller's flow.

A stage that fails (a bad input found in a block) asks the others to stop, as does an
interrupt of the caller (Ctrl-C): stage flows that write levels (`flows.write_levels`)
cancel their blocks not yet started and return a Cancelled state, so that the run
still fails at once with the first stage's message.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import Flow
from prefect.states import State

STOPPED = "stopped: another stage of this run failed"


class _StopSignal:
    """Set once, by the first stage that fails; calls the hooks the others registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._hooks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._set

    @contextmanager
    def hook(self, function: Callable[[], None]) -> Iterator[None]:
        with self._lock:
            already = self._set
            if not already:
                self._hooks.append(function)
        if already:
            function()
        try:
            yield
        finally:
            with self._lock:
                if function in self._hooks:
                    self._hooks.remove(function)


_SIGNAL: contextvars.ContextVar[_StopSignal | None] = contextvars.ContextVar("scalereg_stop_signal", default=None)


def stop_requested() -> bool:
    """Whether another stage running side by side with this one failed (False when this
    stage runs alone)."""
    signal = _SIGNAL.get()
    return signal is not None and signal.is_set()


@contextmanager
def on_stop(function: Callable[[], None]) -> Iterator[None]:
    """Within the block, call ``function`` (from another thread) as soon as another stage
    running side by side with this one fails; at once if one already has.  A no-op for a
    stage that runs alone."""
    signal = _SIGNAL.get()
    if signal is None:
        yield
        return
    with signal.hook(function):
        yield


class _NextStageMayStart:
    """A flow's on-running hook that lets the next stage start.  The flow, its hooks
    included, travels with every task it submits: pickled, the hook leaves its event
    behind (a task never calls it)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, flow: Flow, flow_run: Any, state: State) -> None:
        self.event.set()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.event = threading.Event()


def run_side_by_side(stages: list[tuple[Flow, dict[str, Any]]]) -> list[State]:
    """Run each stage flow of ``stages`` (a flow and its parameters) in a thread of its
    own, in this thread's Prefect context; returns their final states in the same order
    once all have returned.  The first that ends in a state other than Completed (or
    raises) asks the others to stop.

    Each starts once the one before it is running: Prefect's default server (SQLite)
    refuses concurrent writes with a 503 that its client retries two seconds later, and
    two flow runs created at once meet that every time."""
    if not stages:
        return []
    signal = _StopSignal()
    running = [threading.Event() for _ in stages]

    def run(index: int, stage: Flow, parameters: dict[str, Any]) -> State:
        _SIGNAL.set(signal)
        if index:
            running[index - 1].wait()
        try:
            hooks = [*stage.on_running_hooks, _NextStageMayStart(running[index])]
            state = stage.with_options(on_running=hooks)(**parameters, return_state=True)
        except BaseException:
            signal.set()
            raise
        finally:
            running[index].set()  # also when it never ran
        if not state.is_completed():
            signal.set()
        return state

    # one copy of the context per thread: a context can be entered by one thread at a time
    contexts = [contextvars.copy_context() for _ in stages]
    with ThreadPoolExecutor(max_workers=len(stages), thread_name_prefix="stage") as pool:
        futures = [pool.submit(context.run, run, index, *stage) for index, (context, stage) in enumerate(zip(contexts, stages))]
        try:
            return [future.result() for future in futures]
        except BaseException:  # a stage raised, or Ctrl-C here: the others stop at their next block
            signal.set()
            raise


def first_failure(states: list[State]) -> State | None:
    """The state to fail the run with: the first that failed for a reason of its own,
    else the first stopped one; None when all completed."""
    unfinished = [state for state in states if not state.is_completed()]
    own = [state for state in unfinished if state.message != STOPPED]
    return (own or unfinished or [None])[0]
