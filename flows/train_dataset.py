"""The training flow's dataset stage (`preprocessing`): which of the stage's doors a job goes
through (one training file, a weighted mixture, a preference file for dpo/kto), what it
reports, and the stored copy a resume refetches from."""

from __future__ import annotations

from brightrun.registry import repository as repo
from brightrun.resources import Resources
from flows.job_run import JobRun
from flows.params import TrainRequest
from tasks.dataset.mixture import WeightedSource
from tasks.dataset.task import (
    prepare_job_dataset_task,
    prepare_job_mixture_task,
    prepare_job_preferences_task,
)


def _dataset_source(resources: Resources, request: TrainRequest) -> str:
    """The training file to fetch: the caller's path or URI, or where the app's
    `training_files` row says it is (`json_file_path` under its training-files bucket)."""
    if request.dataset is not None:
        return request.dataset
    assert request.training_file_id is not None  # resolve_train_request checked one is given
    _, uri = repo.resolve_training_file(
        resources.registry,
        request.training_file_id,
        bucket_url=resources.settings.training_files_url,
        allow_local_paths=resources.settings.fetch_allow_local_paths,
    )
    return uri


def preprocess(job: JobRun) -> None:
    """The dataset stage (`preprocessing`): one door that fetches the training file once, keeps
    it as `datasets/<sha256>.json`, validates, tokenizes, splits, uploads and records it."""
    recorder, request = job.recorder, job.resolved.request
    recorder.transition("preprocessing")
    if job.spec.training.objective != "sft":
        preprocess_preferences(job, request)
        return
    if request.datasets:
        preprocess_mixture(job, request.datasets)
        return
    dataset = prepare_job_dataset_task(
        job.resources,
        job_id=job.job_id,
        dataset=_dataset_source(job.resources, request),
        spec=job.spec,
        storage=job.storage,
        training_file_id=str(request.training_file_id) if request.training_file_id else None,
    )
    recorder.reporter.dataset_report(dataset.report_markdown)
    recorder.event(
        "dataset_validated",
        0,
        {
            "source_sha256": dataset.sha256,
            "source_uri": dataset.source_uri,
            "training_file_id": dataset.training_file_id,
            "conversations": dataset.report.conversations,
            "train_examples": dataset.train_examples,
            "validation_examples": dataset.validation_examples,
            "trained_tokens": dataset.report.trained_tokens,
        },
    )
    # A resume refetches from the pipeline's own copy, never from a caller's (signed, expiring) URL.
    row = repo.get_job(recorder.engine, job.job_id)
    params = {**row.metadata.get("params", {}), "dataset": dataset.source_uri}
    params.pop("training_file_id", None)
    repo.update_job(recorder.engine, job.job_id, metadata={**row.metadata, "params": params})
    job.spec = job.spec.model_copy(update={"dataset_sha256": dataset.sha256})


def preprocess_preferences(job: JobRun, request: TrainRequest) -> None:
    """A dpo/kto job: its preference file checked, deduplicated, split, uploaded, recorded."""
    assert not request.datasets  # resolve_train_request refuses a preference mixture
    dataset = prepare_job_preferences_task(
        job.resources,
        job_id=job.job_id,
        dataset=_dataset_source(job.resources, request),
        spec=job.spec,
        storage=job.storage,
        training_file_id=str(request.training_file_id) if request.training_file_id else None,
    )
    job.recorder.reporter.dataset_report(dataset.report_markdown)
    job.recorder.event("dataset_validated", 0, dataset.model_dump(exclude={"report_markdown"}))
    row = repo.get_job(job.recorder.engine, job.job_id)
    params = {**row.metadata.get("params", {}), "dataset": dataset.source_uri}
    params.pop("training_file_id", None)
    repo.update_job(job.recorder.engine, job.job_id, metadata={**row.metadata, "params": params})
    job.spec = job.spec.model_copy(update={"dataset_sha256": dataset.sha256})


def preprocess_mixture(job: JobRun, sources: list[WeightedSource]) -> None:
    """Several weighted training files: each prepared and recorded, merged, uploaded."""
    resources = job.resources
    mixture = prepare_job_mixture_task(
        resources,
        job_id=job.job_id,
        sources=sources,
        spec=job.spec,
        storage=job.storage,
        locate=lambda file_id: _dataset_source(
            resources, TrainRequest(base_model="-", training_file_id=file_id)
        ),
    )
    job.recorder.reporter.dataset_report(mixture.report_markdown)
    job.recorder.event("dataset_validated", 0, mixture.mixture.model_dump(mode="json"))
    # A resume refetches from the pipeline's own copies, never from a caller's URLs.
    row = repo.get_job(job.recorder.engine, job.job_id)
    params = {**row.metadata.get("params", {}), "datasets": [s.model_dump() for s in mixture.sources]}
    repo.update_job(job.recorder.engine, job.job_id, metadata={**row.metadata, "params": params})
    job.spec = job.spec.model_copy(update={"dataset_sha256": mixture.mixture.sha256})
