"""The Prefect tasks of the dataset stage inside a real flow run (Prefect test harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brightrun import prepared

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_prepares_caches_and_publishes_report(
    prefect_harness: None, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.dataset import PrepareOptions, fetch_dataset_task, prepare_dataset_task

    out = tmp_path / "data"

    @flow
    def dataset_stage() -> tuple[Any, Any]:
        source = fetch_dataset_task(str(sample_dataset), tmp_path / "cache")
        first = prepare_dataset_task(source, str(tiny_model), out, PrepareOptions(), return_state=True)
        again = prepare_dataset_task(source, str(tiny_model), out, PrepareOptions(), return_state=True)
        return first, again

    first, again = dataset_stage()
    assert first.is_completed() and first.name != "Cached"
    assert again.name == "Cached"
    report = again.result()
    assert report.conversations == 12 and (out / prepared.META).exists()
    # Raw filter request: Artifact.get sends nulls that this FastAPI pin rejects (422).
    with get_client(sync_client=True) as client:
        response = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["dataset-report"]}}, "limit": 5, "offset": 0},
        )
    response.raise_for_status()
    artifacts = response.json()
    assert artifacts and artifacts[0]["type"] == "markdown"
    assert f"| kept targets | {report.kept_targets} |" in artifacts[0]["data"]


def test_a_cached_preparation_whose_output_was_deleted_runs_again(
    prefect_harness: None, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """A cleaned cache or a new machine: the cache entry must not hand back a report of files
    that are no longer there."""
    import shutil

    from prefect import flow

    from tasks.dataset import PrepareOptions, prepare_dataset_cached

    out = tmp_path / "data"

    @flow
    def prepare_twice() -> None:
        prepare_dataset_cached(sample_dataset, str(tiny_model), out, PrepareOptions())
        shutil.rmtree(out)
        prepare_dataset_cached(sample_dataset, str(tiny_model), out, PrepareOptions())

    prepare_twice()
    assert (out / prepared.META).is_file() and (out / prepared.TRAIN).is_file()
