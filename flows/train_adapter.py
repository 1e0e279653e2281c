"""`train_adapter`: a dataset in, a registered LoRA adapter out (DESIGN.md §3).

The body reads top to bottom: resolve the request → create the job (`queued`) → the dataset
stage (`preprocessing`) → write `spec.json` → train (a pod, watched, interruptions resumed;
`model_loaded`, `training`) → publish the adapter → end (`completed`, or `failed` with the
error, or `cancelled`). Every path ends with the job's pods terminated.

Start it from the Prefect UI (a deployment), a schedule, Python (`train_adapter(...)` or
`run_deployment("train_adapter/...")`) or `brightrun train`.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled
from pydantic import SecretStr

from brightrun.errors import BrightrunError, InputError
from brightrun.layout import JobLayout
from brightrun.protocol import TrainerResult
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import ComputeBackend
from brightrun.spec import (
    CheckpointSettings,
    EvaluationSettings,
    JobSpec,
    LoraSettings,
    PreprocessingSettings,
    PresetName,
    ProvisioningPolicy,
    QuantizationSettings,
    TrainingSettings,
)
from brightrun.storage import ObjectNotFound, Storage, StorageError
from flows.params import ResolvedRequest, TrainRequest, dataset_display_name, resolve_train_request
from tasks.artifacts import publish_adapter
from tasks.dataset import prepare_job_dataset_task
from tasks.job import (
    JobRecorder,
    current_flow_run_id,
    finish_cancel,
    new_job_id,
    rename_current_flow_run,
    statuses_for_phase,
    take_over_job,
)
from tasks.monitor import Outcome, run_job
from tasks.notify import WebhookNotifier
from tasks.reporting import (
    RunReporter,
    RunSummary,
    TrainerLogForwarder,
    attach_library_loggers,
    baseline_eval_loss,
    curve_points,
    forward_trainer_logs,
    loss_curve_svg,
    render_summary_markdown,
    run_name,
)

log = logging.getLogger("flows.train_adapter")

LOSS_CURVE = "loss_curve.svg"
SUMMARY = "summary.md"
LIVE_STATUSES = ["queued", "preprocessing", "model_loaded", "training"]


class JobCancelled(BrightrunError):
    """The job was cancelled while it ran (UI, API or `brightrun jobs cancel`)."""


# ---------------------------------------------------------------- stages (one task each)


@task(name="create-job", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def create_job(resources: Resources, resolved: ResolvedRequest, job_id: str, storage: Storage) -> str:
    """The `training_jobs` row (`queued`); an existing row (a resume) is left as it is."""
    request = resolved.request
    job = repo.create_job(
        resources.registry,
        job_id=job_id,
        job_name=request.job_name or run_name(resolved.dataset_name, resolved.spec.base_model, job_id),
        base_model=resolved.spec.base_model,
        preset=resolved.spec.preset.value if resolved.spec.preset else None,
        hyperparameters=resolved.spec.model_dump(
            mode="json",
            include={"lora", "quantization", "training", "checkpoint", "evaluation", "preprocessing"},
        ),
        compute_backend=resolved.compute.value,
        storage_prefix=storage.uri(JobLayout(job_id).prefix),
        flow_run_id=current_flow_run_id(),
        created_by=request.created_by,
        metadata={
            "params": request.recorded(),
            "storage_url": storage.url,
            "dataset_name": resolved.dataset_name,
        },
    )
    return job.status


@task(name="write-spec", retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def write_spec(storage: Storage, spec: JobSpec) -> str:
    """`spec.json` for the trainer. It never holds a secret: credentials reach the trainer
    through its environment only."""
    key = JobLayout(spec.job_id).spec
    storage.put_bytes(key, spec.model_dump_json(indent=2).encode())
    return storage.uri(key)


@task(name="train", retries=0, cache_policy=NO_CACHE)
def train(
    resources: Resources,
    resolved: ResolvedRequest,
    spec: JobSpec,
    storage: Storage,
    recorder: JobRecorder,
) -> Outcome:
    """Provision the trainer and watch it until it ends (a retried training would double-spend:
    interruptions are resumed inside)."""
    compute = resources.compute(resolved.compute, spec.provisioning)
    if resolved.compute is ComputeBackend.runpod:
        _estimate_cost(compute, spec, storage, recorder)
    policy = monitor_policy(resolved.compute, spec.provisioning, resolved.request)
    # The trainer's log lines (logs/*.jsonl in storage, from any pod) into this run's logs.
    with forward_trainer_logs(storage, spec.job_id, interval_s=max(2.0, policy.poll_interval_seconds)):
        return run_job(
            compute=compute,
            storage=storage,
            job_id=spec.job_id,
            spec_uri=storage.uri(JobLayout(spec.job_id).spec),
            policy=policy,
            env=resources.trainer_env(storage.url),
            recorder=recorder,
            cancel=recorder.cancel_requested,
        )


def publish(resources: Resources, recorder: JobRecorder, spec: JobSpec, storage: Storage) -> str:
    """Verify the adapter the trainer uploaded against its manifest, then register it."""
    # A trainer faster than one poll was never seen loading or training; it did both
    # (result.json says so), so the job passes through those statuses in order.
    for passed in statuses_for_phase("training", recorder.status_value):
        recorder.transition(passed)
    artifact = publish_adapter(resources.registry, storage, spec.job_id, base_model=spec.base_model)
    recorder.lora_artifact_path = artifact.storage_path
    return artifact.storage_path


# ---------------------------------------------------------------- helpers


def _estimate_cost(compute: Any, spec: JobSpec, storage: Storage, recorder: JobRecorder) -> None:
    """Price the job before renting anything; refuse it when the estimate already breaks the cap."""
    from brightrun import prepared
    from tasks.cost_model import cap_estimate, check_estimate, estimated_total_steps, local_model_config
    from tasks.provision import runpod_prices

    layout = JobLayout(spec.job_id)
    meta = prepared.PreparedMeta.model_validate_json(
        storage.get_bytes(layout.key(f"{spec.dataset_prefix}/{prepared.META}"))
    )
    steps = estimated_total_steps(spec, meta.train_examples)
    policy = spec.provisioning
    estimate = cap_estimate(
        spec,
        meta.train_examples,
        runpod_prices(compute, policy.gpu_count),
        train_tokens=meta.train_tokens,
        model_config=local_model_config(spec.base_model),
    )
    recorder.event(
        "cost_estimated",
        0,
        {
            "steps": steps,
            "usd": estimate.usd,
            "gpu_type": estimate.gpu_type,
            "spot": estimate.spot,
            "hours": estimate.hours,
        },
    )
    repo.set_job_cost(recorder.engine, spec.job_id, estimated_cost_usd=estimate.usd)
    get_run_logger().info("job %s: estimated cost %s for %d steps", spec.job_id, estimate.describe(), steps)
    check_estimate(estimate, policy)


def monitor_policy(
    compute: ComputeBackend, policy: ProvisioningPolicy, request: TrainRequest
) -> ProvisioningPolicy:
    """A local trainer is a subprocess beside us: poll it every second, not every ten (unless the
    caller set the poll interval; the UI's form sends an empty provisioning section)."""
    chosen = request.provisioning.model_fields_set if request.provisioning is not None else set()
    if compute is ComputeBackend.local and "poll_interval_seconds" not in chosen:
        return policy.model_copy(update={"poll_interval_seconds": 1.0})
    return policy


def _terminate_pods(
    resources: Resources, resolved: ResolvedRequest, spec: JobSpec
) -> tuple[list[str], list[str]]:
    """Belt and braces: whatever happened, no pod of this job keeps running (or billing).
    Returns (pods the provider confirmed terminated, pods it did not: the reaper's)."""
    from brightrun.compute import ComputeError, PodTerminationError, terminate_with_patience

    try:
        compute = resources.compute(resolved.compute, spec.provisioning)
        pods = [p for p in compute.list_pods(spec.job_id) if p.state.value != "terminated"]
    except ComputeError as exc:
        log.warning("job %s: could not check for leftover pods (%s); the reaper will", spec.job_id, exc)
        return [], []
    done, failed = [], []
    # An API outage is waited out, bounded (the monitor may already have waited its patience),
    # then the pod is named in the job's error and the reaper takes over.
    patience = min(300.0, spec.provisioning.api_outage_patience_seconds)
    for pod in pods:
        try:
            terminate_with_patience(compute, pod.pod_id, patience_seconds=patience)
            done.append(pod.pod_id)
        except PodTerminationError as exc:
            log.error("job %s: %s", spec.job_id, exc)
            failed.append(pod.pod_id)
    return done, failed


def _publish_loss_curve(recorder: JobRecorder, storage: Storage, layout: JobLayout) -> tuple[str, list[Any]]:
    """`loss_curve.svg` beside the adapter; returns (SVG, the metric records it was drawn from)."""
    records = [
        {"step": p.step, "loss": p.loss, "eval_loss": p.eval_loss, "attempt": p.attempt}
        for p in repo.list_metrics(recorder.engine, recorder.job_id)
    ]
    train_points, evals = curve_points(records)
    svg = loss_curve_svg(train_points, evals, title=f"Loss of job {recorder.job_id}")
    storage.put_bytes(layout.key(LOSS_CURVE), svg.encode())
    return svg, records


def _read_optional_json(storage: Storage, key: str) -> dict[str, Any]:
    try:
        return dict(storage.get_json(key))
    except ObjectNotFound:
        return {}


def _read_train_seconds(storage: Storage, layout: JobLayout) -> float | None:
    """Training time from the trainer's result.json (absent when the job did not finish)."""
    try:
        return TrainerResult.model_validate_json(storage.get_bytes(layout.result)).train_seconds
    except ObjectNotFound:
        return None


def _finish_report(
    recorder: JobRecorder,
    resolved: ResolvedRequest,
    storage: Storage,
    layout: JobLayout,
    status: str,
    error_message: str | None,
) -> str:
    """The run's summary: `summary.md`, the summary artifact (with the loss curve), the
    terminal's last words; and the whole trainer log as `training.log` (on every exit path)."""
    svg, records, loss_curve_uri = None, [], None
    try:
        svg, records = _publish_loss_curve(recorder, storage, layout)
        loss_curve_uri = storage.uri(layout.key(LOSS_CURVE))
        recorder.reporter.loss_curve(loss_curve_uri, create=False)
    except StorageError as exc:
        log.warning("job %s: no loss curve (%s)", recorder.job_id, exc)
    training_log_uri = TrainerLogForwarder(storage, recorder.job_id).publish()
    if training_log_uri:
        repo.update_job(recorder.engine, recorder.job_id, training_log_path=training_log_uri)
    evaluation = _read_optional_json(storage, layout.eval)
    job = repo.get_job(recorder.engine, recorder.job_id)
    summary = RunSummary(
        job_id=recorder.job_id,
        status=status,
        base_model=resolved.spec.base_model,
        dataset=resolved.dataset_name,
        steps=job.current_step,
        eval_loss=evaluation.get("eval_loss"),
        perplexity=evaluation.get("perplexity"),
        baseline_eval_loss=baseline_eval_loss(records),
        samples=evaluation.get("samples") or [],
        cost_usd=job.actual_cost_usd,
        interruptions=max(recorder.interruptions, job.retry_count),
        train_seconds=_read_train_seconds(storage, layout),
        adapter_uri=job.lora_artifact_path,
        summary_uri=storage.uri(layout.key(SUMMARY)),
        loss_curve_uri=loss_curve_uri,
        training_log_uri=training_log_uri,
        error_message=error_message,
    )
    markdown = render_summary_markdown(summary, loss_curve=svg)
    try:
        storage.put_bytes(layout.key(SUMMARY), markdown.encode())
    except StorageError as exc:
        log.warning("job %s: summary not stored (%s)", recorder.job_id, exc)
        summary = dataclasses.replace(summary, summary_uri=None)
    recorder.reporter.finish(summary, loss_curve=svg)
    return markdown


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


def prepare_dataset(
    resources: Resources, resolved: ResolvedRequest, spec: JobSpec, storage: Storage, recorder: JobRecorder
) -> JobSpec:
    """The dataset stage (`preprocessing`): one door that fetches the training file once, keeps
    it as `datasets/<sha256>.json`, validates, tokenizes, splits, uploads and records it."""
    recorder.transition("preprocessing")
    dataset = prepare_job_dataset_task(
        resources,
        job_id=spec.job_id,
        dataset=_dataset_source(resources, resolved.request),
        spec=spec,
        storage=storage,
        training_file_id=str(resolved.request.training_file_id)
        if resolved.request.training_file_id
        else None,
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
    job = repo.get_job(recorder.engine, spec.job_id)
    params = {**job.metadata.get("params", {}), "dataset": dataset.source_uri}
    params.pop("training_file_id", None)
    repo.update_job(recorder.engine, spec.job_id, metadata={**job.metadata, "params": params})
    return spec.model_copy(update={"dataset_sha256": dataset.sha256})


# ---------------------------------------------------------------- the flow


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """A worker or `serve` killed this run's process on a cancel from the UI: finish the job here.

    (A run called in-process is not killed: its monitor sees the cancel request and the
    flow records `cancelled` itself.)
    """
    with Resources.from_settings() as resources:
        live = repo.list_jobs(resources.registry, status=LIVE_STATUSES, limit=None)
        for job in (j for j in live if j.flow_run_id == str(flow_run.id)):
            finish_cancel(resources, job)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    dataset = params.get("dataset") or f"training-file-{str(params.get('training_file_id', ''))[:8]}"
    if isinstance(dataset, SecretStr):  # a signed URL, masked in Prefect's records
        dataset = dataset.get_secret_value()
    return run_name(
        dataset_display_name(str(dataset)), str(params.get("base_model", "")), params.get("job_id") or "new"
    )


@flow(
    name="train_adapter",
    flow_run_name=_flow_run_name,
    validate_parameters=False,  # validated below, every problem at once, as one InputError
    log_prints=True,
    retries=0,  # a retried training would double-spend; interruptions are resumed inside
    on_cancellation=[_on_cancellation],
)
def train_adapter(
    base_model: str,
    dataset: str | None = None,
    training_file_id: uuid.UUID | None = None,
    preset: PresetName | None = PresetName.balanced,
    lora: LoraSettings | None = None,
    quantization: QuantizationSettings | None = None,
    training: TrainingSettings | None = None,
    checkpoint: CheckpointSettings | None = None,
    evaluation: EvaluationSettings | None = None,
    preprocessing: PreprocessingSettings | None = None,
    provisioning: ProvisioningPolicy | None = None,
    compute: ComputeBackend | None = None,
    storage_url: str | None = None,
    webhook_url: str | None = None,
    job_name: str | None = None,
    created_by: uuid.UUID | None = None,
    job_id: str | None = None,
) -> Any:
    """Train a LoRA adapter on a training file for `base_model` and register it.

    Args:
        base_model: hub id (meta-llama/Meta-Llama-3-8B-Instruct) or a local model directory.
        dataset: training file (brightrun-lora-v4 JSON): a path, s3:// URI or https URL.
        training_file_id: or a training_files row (its json_file_path is fetched).
        preset: conservative, balanced or aggressive; fields set below override it.
        lora: LoRA rank, alpha, dropout and target modules.
        quantization: 4-bit NF4 QLoRA (default) or plain LoRA.
        training: learning rate, epochs or max_steps, batch size, sequence length, seed.
        checkpoint: checkpoint cadence (steps, seconds) and how many to keep.
        evaluation: evaluation cadence and sample replies.
        preprocessing: quality threshold, validation fraction, over-long targets.
        provisioning: RunPod GPU types, spot/on-demand, bid, budget and duration caps.
        compute: local (a subprocess here) or runpod; default BRIGHTRUN_COMPUTE.
        storage_url: a directory or s3://bucket/prefix; default BRIGHTRUN_STORAGE_URL.
        webhook_url: receives signed job updates (secret: BRIGHTRUN_WEBHOOK_SECRET).
        job_name: a label for the dashboard (default: the run name).
        created_by: the user who started the job (auth.users id).
        job_id: resume this job (its data and checkpoints are reused).
    """
    raw = {
        "dataset": dataset,
        "training_file_id": training_file_id,
        "base_model": base_model,
        "preset": preset,
        "lora": lora,
        "quantization": quantization,
        "training": training,
        "checkpoint": checkpoint,
        "evaluation": evaluation,
        "preprocessing": preprocessing,
        "provisioning": provisioning,
        "compute": compute,
        "storage_url": storage_url,
        "webhook_url": webhook_url,
        "job_name": job_name,
        "created_by": created_by,
    }
    with Resources.from_settings() as resources:
        # Before any row, file or pod exists: every problem at once, then stop.
        resolved = resolve_train_request(raw, resources.settings)
        return run_training_job(resources, resolved, job_id)


def run_training_job(resources: Resources, resolved: ResolvedRequest, resume_job_id: str | None) -> Any:
    """resolve → job → dataset → spec → train → publish → end."""
    logger = get_run_logger()
    attach_library_loggers()
    job_id = resume_job_id or new_job_id()
    storage = resources.open_storage(resolved.storage_url)
    layout = JobLayout(job_id)
    spec = resolved.spec.model_copy(update={"job_id": job_id})

    status = create_job(resources, resolved, job_id, storage)
    name = run_name(resolved.dataset_name, spec.base_model, job_id)
    rename_current_flow_run(name)
    logger.info(
        "job %s (%s): %s on %s, compute=%s",
        job_id,
        name,
        resolved.dataset_name,
        spec.base_model,
        resolved.compute.value,
    )
    secret = resources.settings.webhook_secret
    recorder = JobRecorder(
        engine=resources.registry,
        job_id=job_id,
        notifier=WebhookNotifier(resolved.request.webhook_url, secret.get_secret_value() if secret else None),
        reporter=RunReporter(job_id),
        flow_run_id=current_flow_run_id(),
        status_value=status,
    )
    existing = repo.get_job(resources.registry, job_id)
    if resume_job_id is not None:  # refuses a job resume cannot help; crashes the dead flow run
        existing = take_over_job(
            resources.registry, existing, current_flow_run_id(), trainer_failed=storage.exists(layout.failure)
        )
        recorder.status_value = existing.status
    if existing.is_terminal:
        logger.info("job %s is already %s; nothing to do", job_id, existing.status)
        return {
            "job_id": job_id,
            "status": existing.status,
            "lora_artifact_path": existing.lora_artifact_path,
        }
    if status == "queued":
        recorder.notifier.status_changed(recorder._payload("queued"))

    final_status, error_message, bad_input = "failed", None, False
    try:
        if storage.exists(layout.spec):
            logger.info("job %s: spec.json and data already in storage; resuming", job_id)
            spec = JobSpec.model_validate_json(storage.get_bytes(layout.spec))
        else:
            spec = prepare_dataset(resources, resolved, spec, storage, recorder)
            write_spec(storage, spec)
        if recorder.cancel_requested():
            raise JobCancelled(f"job {job_id} was cancelled before training")
        outcome = train(resources, resolved, spec, storage, recorder)
        if outcome.kind.value == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled ({outcome.reason})")
        if outcome.kind.value != "completed":
            recorder.failure_kind = outcome.failure_kind  # `brightrun resume` reads it
            raise BrightrunError(outcome.reason or f"job {job_id}: {outcome.kind.value}")
        publish(resources, recorder, spec, storage)
        final_status = "completed"
    except JobCancelled as exc:
        final_status, error_message = "cancelled", str(exc)
    except InputError as exc:
        final_status, error_message, bad_input = "failed", str(exc), True
        recorder.failure_kind = "input"
    except BaseException as exc:  # noqa: BLE001  (record it, then let Prefect see it)
        final_status, error_message = "failed", f"{type(exc).__name__}: {exc}"
        if _cancelled_from_prefect(exc, recorder):
            # Cancel in the Prefect UI: `serve` or the worker SIGTERMs this process; the pod
            # was terminated on the way out of the monitor; the job is cancelled, not failed.
            final_status, error_message = "cancelled", f"job {job_id} was cancelled from Prefect"
            logger.warning("job %s: cancelled from Prefect; terminating its pods", job_id)
        _end(resources, resolved, spec, recorder, storage, final_status, error_message)
        raise
    _end(resources, resolved, spec, recorder, storage, final_status, error_message)
    result = {
        "job_id": job_id,
        "status": final_status,
        "lora_artifact_path": recorder.lora_artifact_path,
        "error_message": error_message,
        "run_name": name,
    }
    if final_status == "cancelled":
        return Cancelled(message=error_message, data=result)
    if final_status == "failed":
        # Bad input keeps its type, so `brightrun train` exits 2 as for any other bad input.
        raise (InputError if bad_input else BrightrunError)(error_message or f"job {job_id} failed")
    return result


def _cancelled_from_prefect(exc: BaseException, recorder: JobRecorder) -> bool:
    """True for the SIGTERM a cancel from the Prefect UI or API sends this process (under
    `serve` or a worker); False for any other termination (a crash stays `failed`)."""
    from prefect.exceptions import TerminationSignal

    from tasks.job import flow_run_cancel_requested

    if not isinstance(exc, TerminationSignal):
        return False
    try:
        from prefect._internal import control_listener  # the runner's cancel intent, when sent

        if control_listener.get_intent() == "cancel":
            return True
    except Exception:  # a private API: the flow run's state below is the public answer
        pass
    return flow_run_cancel_requested(recorder.flow_run_id)


def _end(
    resources: Resources,
    resolved: ResolvedRequest,
    spec: JobSpec,
    recorder: JobRecorder,
    storage: Storage,
    status: str,
    error_message: str | None,
) -> None:
    """Terminal bookkeeping: no pod left, the registry row final, the UI and webhook told."""
    logger = get_run_logger()
    layout = JobLayout(recorder.job_id)
    if status != "completed":
        if status == "cancelled":
            try:
                storage.put_bytes(layout.cancel, b"cancelled\n")  # a local trainer stops at its next step
            except StorageError as exc:
                logger.warning("could not write the cancel marker: %s", exc)
        left, unterminated = _terminate_pods(resources, resolved, spec)
        if left:
            recorder.event("pod_terminated", 0, {"pods": left, "reason": status})
        if unterminated:
            recorder.event("pod_termination_failed", 0, {"pods": unterminated, "reason": status})
            error_message = (
                f"{error_message or status}; pod(s) {', '.join(unterminated)} could not be terminated "
                "(RunPod did not confirm): the reaper retries them, or run `brightrun reap`"
            )
    try:
        recorder.transition(status, error_message=error_message)
    except Exception as exc:
        logger.error("job %s: could not record status %s: %s", recorder.job_id, status, exc)
    try:
        _finish_report(recorder, resolved, storage, layout, status, error_message)
    except Exception as exc:
        logger.warning("job %s: no summary (%s)", recorder.job_id, exc)
    recorder.flush()
    logger.info("job %s %s%s", recorder.job_id, status, f": {error_message}" if error_message else "")
