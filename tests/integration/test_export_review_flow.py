"""Review before training on a real Prefect API (issue 19): a pending export pauses
`export_feedback` for the `ReviewInput` form; the form answered through Prefect's API
(`resume_flow_run(run_input=...)`, what the UI's form posts) lets it continue to the retrain,
or ends it cleanly on a rejection."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from tests.integration.test_export_flow import T0, _seed, _train_deployment

pytestmark = pytest.mark.integration


@pytest.fixture
def prefect_api(prefect_harness: str) -> str:
    return prefect_harness


def _start(parameters: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    from flows.export_feedback import export_feedback

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["state"] = export_feedback(return_state=True, **parameters)
        except BaseException as error:  # surfaced by the test, not lost in the thread
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _paused_run(out: dict[str, Any], timeout_s: float = 60) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert "error" not in out, out.get("error")
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["export_feedback"])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError("export_feedback never paused for review")


def _training_runs() -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train_adapter"]))))


def _file(home: Path) -> repo.TrainingFileView:
    engine = open_registry_url(f"sqlite:///{home / 'registry.db'}")
    try:
        (only,) = repo.list_training_files(engine)
        return only
    finally:
        engine.dispose()


def _parameters(deployment: str) -> dict[str, Any]:
    return {
        "since": T0,
        "until": T0 + timedelta(days=1),
        "min_examples": 1,
        "auto_train": True,
        "train_deployment": deployment,
        "train_base_model": "tiny",
        "review": "pause",
        "review_poll_seconds": 1,
    }


def test_approving_the_form_lets_the_paused_export_train(prefect_api: None, brightrun_home: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    _seed(brightrun_home / "registry.db", 3)
    deployment = _train_deployment()
    before = _training_runs()
    thread, out = _start(_parameters(deployment))
    try:
        paused = _paused_run(out)
        # While it waits: the file is pending and nothing trains on it.
        assert _file(brightrun_home).review_status == "pending"
        assert _training_runs() == before
        resume_flow_run(paused.id, run_input={"decision": "approve", "reviewer": "alice"})
    finally:
        thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    state = out["state"]
    assert state.is_completed()
    summary = state.result()
    assert summary["review"]["status"] == "approved"
    row = _file(brightrun_home)
    assert (row.review_status, row.reviewed_by) == ("approved", "alice") and row.reviewed_at is not None
    assert summary["training_run"] is not None and _training_runs() == before + 1

    from prefect import get_client

    with get_client(sync_client=True) as client:
        # The reviewer read the summary and the sample table beside the form.
        found = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [str(paused.id)]}}, "limit": 10, "offset": 0},
        ).json()
        kinds = {a["key"]: a["type"] for a in found}
        assert kinds.get("export-feedback-sample") == "table" and "export-feedback-review" in kinds
        training = client.read_flow_run(uuid.UUID(summary["training_run"]["flow_run_id"]))
        assert {"source": row.json_file_path, "weight": 1.0} in training.parameters["datasets"]


def test_rejecting_the_form_ends_the_run_cleanly_without_training(
    prefect_api: None, brightrun_home: Path
) -> None:
    from prefect.flow_runs import resume_flow_run

    _seed(brightrun_home / "registry.db", 2)
    deployment = _train_deployment()
    before = _training_runs()
    thread, out = _start(_parameters(deployment))
    try:
        paused = _paused_run(out)
        resume_flow_run(
            paused.id, run_input={"decision": "reject", "reviewer": "bob", "reason": "answers leak prices"}
        )
    finally:
        thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    state = out["state"]
    assert state.is_completed()
    summary = state.result()
    assert summary["review"]["status"] == "rejected" and "answers leak prices" in summary["review"]["message"]
    assert summary["training_run"] is None and _training_runs() == before
    row = _file(brightrun_home)
    assert (row.review_status, row.reviewed_by, row.review_reason) == (
        "rejected",
        "bob",
        "answers leak prices",
    )


def test_no_answer_in_time_leaves_the_file_pending_and_ends_cleanly(
    prefect_api: None, brightrun_home: Path
) -> None:
    _seed(brightrun_home / "registry.db", 1)
    deployment = _train_deployment()
    before = _training_runs()
    parameters = {**_parameters(deployment), "review_timeout_minutes": 0.05}  # 3 s
    thread, out = _start(parameters)
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    state = out["state"]
    assert state.is_completed(), state
    summary = state.result()
    assert summary["review"]["status"] == "pending" and "stays pending" in summary["review"]["message"]
    assert summary["training_run"] is None and _training_runs() == before
    assert _file(brightrun_home).review_status == "pending"
