"""TEMPORARY: the entry points the flow used before the stage had one door.

`flows/train_adapter.py` still calls these until it switches to `prepare_job_dataset`;
delete this module (and `PrepareOptions._old_name`) then. Nothing new should use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from brightrun import prepared
from brightrun.storage import open_storage
from tasks.dataset.fetch import fetch_source
from tasks.dataset.prepare import DatasetReport, PrepareOptions, prepare_dataset


@task(name="fetch-dataset", retries=3, retry_delay_seconds=[2, 10, 30])
def fetch_dataset_task(uri: str, cache_dir: Path, endpoint_url: str | None = None) -> Path:
    return fetch_source(uri, cache_dir, lambda url: open_storage(url, endpoint_url=endpoint_url)).path


def prepare_dataset_cached(
    source: Path, tokenizer: str | Path | Any, out_dir: Path, options: PrepareOptions
) -> DatasetReport:
    """The prepared set in `out_dir` when it is complete, else a new one."""
    if (Path(out_dir) / prepared.META).is_file():
        return DatasetReport.model_validate_json((Path(out_dir) / prepared.REPORT).read_text())
    return prepare_dataset(source, tokenizer, out_dir, options)
