"""The dataset stage's Prefect task inside a real flow run (Prefect test harness): the door
called once, its result typed; bad input fails without retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import load_settings
from brightrun.spec import JobSpec

pytestmark = pytest.mark.integration


def test_task_prepares_in_a_flow_and_does_not_retry_bad_input(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.dataset.stage import PreparedJobDataset
    from tasks.dataset.task import prepare_job_dataset_task

    bad = tmp_path / "bad.json"
    bad.write_text('{"training_file_metadata": {"format_spec": "brightrun-lora-v4"}, "conversations": []}')

    with Resources.from_settings(load_settings()) as resources:
        jobs = [
            str(repo.create_job(resources.registry, job_name=n, base_model=str(tiny_model)).id)
            for n in ("good", "bad")
        ]

        @flow
        def dataset_stage(job_id: str, dataset: str) -> PreparedJobDataset:
            spec = JobSpec(job_id=job_id, base_model=str(tiny_model))
            return prepare_job_dataset_task(
                resources, job_id=job_id, dataset=dataset, spec=spec, storage=resources.storage
            )

        good_state = dataset_stage(jobs[0], str(sample_dataset), return_state=True)
        result = good_state.result()
        assert isinstance(result, PreparedJobDataset) and result.report.conversations == 12
        bad_state = dataset_stage(jobs[1], str(bad), return_state=True)
        with pytest.raises(InputError, match="conversations"):
            bad_state.result()

    ours = {good_state.state_details.flow_run_id, bad_state.state_details.flow_run_id}
    with get_client(sync_client=True) as client:  # the harness is shared: only this test's runs
        runs = [
            r
            for r in client.read_task_runs()
            if r.name.startswith("prepare-dataset") and r.flow_run_id in ours
        ]
    assert len(runs) == 2
    assert sorted((r.state_type.value, r.run_count) for r in runs) == [("COMPLETED", 1), ("FAILED", 1)]
