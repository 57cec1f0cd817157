"""What the sweep decides for a volume from its output and the runs it started before,
against real flow runs on the Prefect test server (states set through the API)."""

from __future__ import annotations

import pytest

from flows.sweep_inputs import _next_action, _volume_tag
from scalereg.errors import BAD_INPUT_STATE
from scalereg.find_volumes import FoundVolume

pytestmark = pytest.mark.integration


@pytest.fixture
def volume_runs(prefect_server, tmp_path):
    """A deployment, a volume, and a way to add runs of it in a given state."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed, Running

    states = {"running": Running, "completed": Completed, "failed": lambda: Failed(message="worker lost"),
              "bad-input": lambda: Failed(name=BAD_INPUT_STATE, message="a.tif: not an image")}  # fmt: skip
    volume = FoundVolume("a", str(tmp_path / "incoming" / "a.tif"))
    out = str(tmp_path / "outputs" / "a")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("register-brain")
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"sweep-test-{tmp_path.name}")

        def add(state: str):
            run = client.create_flow_run_from_deployment(deployment_id, tags=[_volume_tag(volume, out)])
            client.set_flow_run_state(run.id, states[state](), force=True)

        def decide(max_attempts: int = 2) -> str:
            return _next_action(client, deployment_id, volume, out, max_attempts)[0]

        yield add, decide, out


def test_a_new_volume_starts_its_first_attempt(volume_runs):
    add, decide, _ = volume_runs
    assert decide() == "start attempt-1"


def test_a_volume_in_flight_is_not_started_again(volume_runs):
    add, decide, _ = volume_runs
    add("running")
    assert decide() == "running"


def test_failures_are_retried_up_to_max_attempts(volume_runs):
    add, decide, _ = volume_runs
    add("failed")
    assert decide() == "start attempt-2"
    add("failed")
    assert decide().startswith("failed 2 times, not retried: worker lost")
    assert decide(max_attempts=3) == "start attempt-3"


def test_bad_input_is_not_retried(volume_runs):
    add, decide, _ = volume_runs
    add("bad-input")
    assert decide() == "failed on bad input, not retried: a.tif: not an image"


def test_done_is_the_report_not_the_run_state(volume_runs, tmp_path):
    add, decide, out = volume_runs
    add("completed")
    assert decide() == "start attempt-2", "a completed run whose outputs were removed is registered again"
    (tmp_path / "outputs" / "a").mkdir(parents=True)
    (tmp_path / "outputs" / "a" / "report.md").write_text("# done")
    assert decide() == "done"


def test_a_sweep_whose_output_is_inside_its_inputs_is_refused(prefect_server, tmp_path):
    """Outputs written under the swept folder would be found as volumes by the next
    sweep (and overwrite could delete what is swept): refused before anything starts."""
    from flows.sweep_inputs import sweep_inputs

    (tmp_path / "incoming").mkdir()
    state = sweep_inputs(inputs=str(tmp_path / "incoming"), fixed={"uri": str(tmp_path / "atlas.nii.gz")},
                         output=str(tmp_path / "incoming" / "registered"), return_state=True)  # fmt: skip
    assert state.is_failed() and state.name == BAD_INPUT_STATE
    assert "lies inside the inputs location" in state.message and not (tmp_path / "incoming" / "registered").exists()
