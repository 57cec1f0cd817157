"""Stage flows side by side (flows.side_by_side): order of states, start order, and the
stop signal a failing stage sends the others.  The stages are small flows on a real
Prefect server; the whole pipeline's use is in test_flow_register_brain.py."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow
from prefect.states import Cancelled, Completed, Failed

from flows.side_by_side import STOPPED, first_failure, on_stop, run_side_by_side, stop_requested

pytestmark = pytest.mark.integration


@flow(name="stoppable-stage")
def stoppable(started: object, record: object):
    """Runs until another stage fails (at most 60 s), as write_levels does."""
    stopped = threading.Event()
    with on_stop(stopped.set):
        started.set()
        record["stopped"] = stopped.wait(60)
        record["thread"] = threading.current_thread().name
        return Cancelled(message=STOPPED) if stop_requested() else Completed(message="ran out")


@flow(name="failing-stage")
def failing(started: object, message: str):
    assert started.wait(60)  # the other stage is running and listening
    return Failed(name="BadInput", message=message)


@flow(name="raising-stage")
def raising(started: object):
    assert started.wait(60)
    raise OSError("the store went away")


@flow(name="meeting-stage")
def meeting(barrier: object, value: str, order: object):
    order.append(value)
    barrier.wait()  # passes only when every stage runs at the same time
    assert not stop_requested()
    return value


@flow(name="late-stage")
def late(calls: object):
    """Registers its stop hook only once the other stage has failed."""
    for _ in range(6000):
        if stop_requested():
            break
        time.sleep(0.01)
    with on_stop(lambda: calls.append("late")):
        return Cancelled(message=STOPPED)


@flow(name="side-by-side-parent")
def parent(stages: object):
    return run_side_by_side(stages)


def test_a_failing_stage_stops_the_others_and_its_failure_is_the_runs(prefect_server):
    started, record = threading.Event(), {}
    states = parent([(stoppable, {"started": started, "record": record}), (failing, {"started": started, "message": "nan.zarr: NaN voxels"})])
    assert record["stopped"] is True and record["thread"].startswith("stage")
    assert [state.type.value for state in states] == ["CANCELLED", "FAILED"]
    failure = first_failure(states)
    assert failure.name == "BadInput" and failure.message == "nan.zarr: NaN voxels"  # not the stopped stage's


def test_stages_run_at_once_start_in_order_and_return_their_states_in_order(prefect_server):
    barrier, order = threading.Barrier(3, timeout=60), []
    states = parent([(meeting, {"barrier": barrier, "value": v, "order": order}) for v in "abc"])
    assert [state.result() for state in states] == ["a", "b", "c"]
    assert order == ["a", "b", "c"]  # each started once the one before was running
    assert first_failure(states) is None
    assert parent([]) == []


def test_a_stage_that_raises_stops_the_others(prefect_server):
    started, record = threading.Event(), {}
    states = parent([(stoppable, {"started": started, "record": record}), (raising, {"started": started})])
    assert record["stopped"] is True
    assert states[1].is_failed() and "went away" in states[1].message
    assert first_failure(states) is states[1]


def test_a_hook_registered_after_the_stop_runs_at_once_and_alone_nothing_stops(prefect_server):
    calls = []
    with on_stop(lambda: calls.append("alone")):  # not side by side: never called
        assert not stop_requested()
    assert calls == []
    started = threading.Event()
    started.set()
    states = parent([(late, {"calls": calls}), (failing, {"started": started, "message": "first"})])
    assert calls == ["late"]
    assert first_failure(states).message == "first"
