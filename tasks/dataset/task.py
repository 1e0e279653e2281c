"""The dataset stage as a Prefect task, for the flow (retries in the decorator).

Bad input (`InputError`) is not retried: the same file fails the same way. Storage and
registry hiccups are; every step of the stage is idempotent (content-addressed source,
cached preparation, overwritten upload, registration keyed on the file's sha256).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from brightrun.errors import InputError
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from brightrun.storage import Storage
from tasks.dataset.mixture import WeightedSource
from tasks.dataset.stage import PreparedJobDataset, prepare_job_dataset
from tasks.dataset.stage_mixture import PreparedMixture, prepare_job_mixture
from tasks.dataset.stage_preferences import PreparedJobPreferences, prepare_job_preferences


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True


def _stage_task(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The stage's Prefect task: retried twice unless the input is bad, never cached by Prefect
    (the stage caches by content itself; its inputs hold live clients)."""
    return task(
        name=name,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=_retry_unless_bad_input,
        cache_policy=NO_CACHE,
    )
    return True


@_stage_task("prepare-dataset")
def prepare_job_dataset_task(
    resources: Resources,
    *,
    job_id: str,
    dataset: str,
    spec: JobSpec,
    storage: Storage,
    training_file_id: str | None = None,
) -> PreparedJobDataset:
    return prepare_job_dataset(
        resources,
        job_id=job_id,
        dataset=dataset,
        spec=spec,
        storage=storage,
        training_file_id=training_file_id,
    )


@_stage_task("prepare-dataset-mixture")
def prepare_job_mixture_task(
    resources: Resources,
    *,
    job_id: str,
    sources: list[WeightedSource],
    spec: JobSpec,
    storage: Storage,
    locate: Callable[[uuid.UUID], str],
) -> PreparedMixture:
    return prepare_job_mixture(
        resources, job_id=job_id, sources=sources, spec=spec, storage=storage, locate=locate
    )


@_stage_task("prepare-preferences")
def prepare_job_preferences_task(
    resources: Resources,
    *,
    job_id: str,
    dataset: str,
    spec: JobSpec,
    storage: Storage,
    training_file_id: str | None = None,
) -> PreparedJobPreferences:
    return prepare_job_preferences(
        resources,
        job_id=job_id,
        dataset=dataset,
        spec=spec,
        storage=storage,
        training_file_id=training_file_id,
    )
