"""`train_adapter`: a dataset in, a registered LoRA adapter out (DESIGN.md §3).

create job (`queued`) → fetch and prepare the dataset (`preprocessing`, cached by input
hash) → upload prepared data and `spec.json` → provision and monitor the trainer
(`model_loaded`, `training`, interruptions resumed) → upload and register the adapter →
`completed`; or `failed` with the error, or `cancelled`. Every path ends with the job's
pods terminated.

Start it from the Prefect UI (a deployment), a schedule, Python (`train_adapter(...)` or
`run_deployment("train_adapter/...")`) or `brightrun train`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Cancelled

from brightrun.errors import BrightrunError, InputError
from brightrun.layout import JobLayout
from brightrun.settings import ComputeBackend, Settings, load_settings
from brightrun.spec import JobSpec, PresetName, ProvisioningPolicy
from flows.params import DatasetOptions, Hyperparameters, JobRequest, resolve_job_request
from tasks.job import (
    JobRecorder,
    create_job_record,
    current_flow_run_id,
    finish_cancel,
    new_job_id,
    register_job_training_file,
    rename_current_flow_run,
    statuses_for_phase,
)
from tasks.notify import WebhookNotifier
from tasks.reporting import RunReporter, attach_library_loggers, loss_curve_svg, run_name, summary_markdown

log = logging.getLogger("flows.train_adapter")

LOSS_CURVE = "loss_curve.svg"
SUMMARY = "summary.md"


class JobCancelled(BrightrunError):
    """The job was cancelled while it ran (UI, API or `brightrun jobs cancel`)."""


# ---------------------------------------------------------------- tasks (I/O, retried)


@task(name="create-job", retries=3, retry_delay_seconds=[1, 5, 15])
def create_job_task(settings: Settings, request: JobRequest, job_id: str, storage_prefix: str) -> str:
    from brightrun.registry import open_registry

    engine = open_registry(settings)
    try:
        job = create_job_record(
            engine,
            job_id=job_id,
            job_name=request.params.job_name
            or run_name(request.dataset_name, request.spec.base_model, job_id),
            base_model=request.spec.base_model,
            preset=request.spec.preset.value if request.spec.preset else None,
            hyperparameters=request.spec.model_dump(
                mode="json", include={"lora", "quantization", "training", "checkpoint", "evaluation"}
            ),
            compute_backend=request.compute.value,
            storage_prefix=storage_prefix,
            flow_run_id=current_flow_run_id(),
            metadata={
                "params": request.params.model_dump(mode="json", exclude_none=True),
                "storage_url": request.storage_url,
                "dataset_name": request.dataset_name,
            },
        )
    finally:
        engine.dispose()
    return job.status


@task(name="upload-prepared-data", retries=3, retry_delay_seconds=[2, 10, 30])
def upload_prepared_task(
    storage_url: str, endpoint_url: str | None, prepared_dir: Path, layout: JobLayout
) -> int:
    from brightrun.storage import open_storage

    storage = open_storage(storage_url, endpoint_url=endpoint_url)
    return len(storage.put_dir(layout.data_dir, prepared_dir))


@task(name="write-spec", retries=3, retry_delay_seconds=[2, 10, 30])
def write_spec_task(storage_url: str, endpoint_url: str | None, spec: JobSpec, layout: JobLayout) -> str:
    from brightrun.storage import open_storage

    storage = open_storage(storage_url, endpoint_url=endpoint_url)
    # The spec never holds a secret (credentials reach the trainer through its env only).
    storage.put_bytes(layout.spec, spec.model_dump_json(indent=2).encode())
    return storage.uri(layout.spec)


# ---------------------------------------------------------------- helpers


def _prepared_dir(settings: Settings, source: Path, tokenizer: str, options: Any) -> Path:
    """Input-addressed: the same file, tokenizer and options share one prepared directory."""
    from brightrun.storage import sha256_file

    digest = hashlib.sha256(
        json.dumps([sha256_file(source), tokenizer, options.model_dump(mode="json")], sort_keys=True).encode()
    ).hexdigest()[:20]
    return settings.cache_dir / "prepared" / digest


def _prepare_options(request: JobRequest) -> Any:
    from tasks.dataset import PrepareOptions

    opts = request.params.dataset_options
    values: dict[str, Any] = {
        "max_seq_length": request.spec.training.max_seq_length,
        "seed": request.spec.training.seed,
    }
    if opts.min_quality is not None:
        values["min_quality"] = opts.min_quality
    if opts.validation_fraction is not None:
        values["val_fraction"] = opts.validation_fraction
    if opts.skip_overlong_targets is not None:
        values["skip_overlong_targets"] = opts.skip_overlong_targets
    return PrepareOptions(**values)


def _make_compute(settings: Settings, request: JobRequest, spec: JobSpec) -> Any:
    if request.compute is ComputeBackend.runpod:
        from brightrun.compute.runpod import RunPodCompute

        return RunPodCompute.from_env(spec.provisioning)
    from brightrun.compute.local import LocalCompute

    return LocalCompute(settings.home)


def _trainer_env(settings: Settings, storage_url: str) -> dict[str, str]:
    """What the trainer needs to reach storage (and the hub); never logged, never in spec.json."""
    import os

    env: dict[str, str] = {"BRIGHTRUN_STORAGE_URL": storage_url}
    endpoint = settings.resolved_s3_endpoint_url
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    if settings.hf_token is not None:
        env["HF_TOKEN"] = settings.hf_token.get_secret_value()
    return env


def _train(
    settings: Settings,
    request: JobRequest,
    spec: JobSpec,
    layout: JobLayout,
    storage: Any,
    recorder: JobRecorder,
) -> Any:
    """Provision and watch the trainer until it ends; returns the monitor's outcome."""
    from tasks.monitor import run_job

    compute = _make_compute(settings, request, spec)
    if request.compute is ComputeBackend.runpod:
        _estimate_cost(compute, spec, layout, storage, recorder)
    return run_job(
        compute=compute,
        storage=storage,
        job_id=spec.job_id,
        spec_uri=storage.uri(layout.spec),
        policy=monitor_policy(request.compute, spec.provisioning, request.params),
        env=_trainer_env(settings, storage.url),
        recorder=recorder,
        cancel=recorder.cancel_requested,
    )


def _estimate_cost(
    compute: Any, spec: JobSpec, layout: JobLayout, storage: Any, recorder: JobRecorder
) -> None:
    """Price the job before renting anything; refuse it when the estimate already breaks the cap."""
    from brightrun import prepared
    from brightrun.registry import repository as repo
    from tasks.provision import check_estimate, estimate_cost, estimated_total_steps, runpod_prices

    meta = prepared.PreparedMeta.model_validate_json(
        storage.get_bytes(layout.key(f"{spec.dataset_prefix}/{prepared.META}"))
    )
    steps = estimated_total_steps(spec, meta.train_examples)
    policy = spec.provisioning
    estimate = estimate_cost(policy, steps, runpod_prices(compute, policy.gpu_count))
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


def monitor_policy(compute: ComputeBackend, policy: ProvisioningPolicy, params: Any) -> ProvisioningPolicy:
    """A local trainer is a subprocess beside us: poll it every second, not every ten."""
    if compute is ComputeBackend.local and params.provisioning is None:
        return policy.model_copy(update={"poll_interval_seconds": 1.0})
    return policy


def _terminate_pods(settings: Settings, request: JobRequest, spec: JobSpec, job_id: str) -> list[str]:
    """Belt and braces: whatever happened, no pod of this job keeps running (or billing)."""
    try:
        compute = _make_compute(settings, request, spec)
        pods = [p for p in compute.list_pods(job_id) if p.state.value != "terminated"]
        for pod in pods:
            compute.terminate(pod.pod_id)
        return [p.pod_id for p in pods]
    except Exception as exc:
        log.warning("job %s: could not check for leftover pods (%s); the reaper will", job_id, exc)
        return []


def _publish_loss_curve(recorder: JobRecorder, storage: Any, layout: JobLayout) -> str | None:
    from brightrun.registry import repository as repo

    points = repo.list_metrics(recorder.engine, recorder.job_id)
    train = [(p.step, p.loss) for p in points if p.loss is not None]
    evals = [(p.step, p.eval_loss) for p in points if p.eval_loss is not None]
    svg = loss_curve_svg(train, evals, title=f"Loss of job {recorder.job_id}")
    key = layout.key(LOSS_CURVE)
    storage.put_bytes(key, svg.encode())
    uri = storage.uri(key)
    recorder.reporter.link("loss-curve", uri, f"Loss curve (SVG) of job {recorder.job_id}")
    return uri


def _read_eval(storage: Any, layout: JobLayout) -> dict[str, Any]:
    try:
        return dict(storage.get_json(layout.eval))
    except Exception:
        return {}


def _finish_report(
    recorder: JobRecorder,
    request: JobRequest,
    storage: Any,
    layout: JobLayout,
    status: str,
    error_message: str | None,
) -> str:
    from brightrun.registry import repository as repo

    loss_curve_uri = None
    try:
        loss_curve_uri = _publish_loss_curve(recorder, storage, layout)
    except Exception as exc:
        log.warning("job %s: no loss curve (%s)", recorder.job_id, exc)
    evaluation = _read_eval(storage, layout)
    job = repo.get_job(recorder.engine, recorder.job_id)
    markdown = summary_markdown(
        job_id=recorder.job_id,
        status=status,
        base_model=request.spec.base_model,
        dataset=request.params.dataset,
        steps=job.current_step,
        eval_loss=evaluation.get("eval_loss"),
        perplexity=evaluation.get("perplexity"),
        samples=evaluation.get("samples") or [],
        cost_usd=job.actual_cost_usd,
        interruptions=max(recorder.interruptions, job.retry_count),
        adapter_uri=job.lora_artifact_path,
        loss_curve_uri=loss_curve_uri,
        error_message=error_message,
        train_seconds=_read_train_seconds(storage, layout),
    )
    recorder.reporter.summary(markdown)
    try:
        storage.put_bytes(layout.key(SUMMARY), markdown.encode())
    except Exception as exc:
        log.warning("job %s: summary not stored (%s)", recorder.job_id, exc)
    return markdown


def _read_train_seconds(storage: Any, layout: JobLayout) -> float | None:
    """Training time from the trainer's result.json (absent when the job did not finish)."""
    from brightrun.protocol import TrainerResult

    try:
        return TrainerResult.model_validate_json(storage.get_bytes(layout.result)).train_seconds
    except Exception:
        return None


def _register_adapter(recorder: JobRecorder, request: JobRequest, storage: Any, layout: JobLayout) -> str:
    """Verify the adapter the trainer uploaded against its manifest, then register it."""
    from tasks.artifacts import publish_adapter

    artifact = publish_adapter(recorder.engine, storage, recorder.job_id, base_model=request.spec.base_model)
    path = artifact.storage_path
    recorder.lora_artifact_path = path
    return path


# ---------------------------------------------------------------- the flow


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """A worker or `serve` killed this run's process on a cancel from the UI: finish the job here.

    (A run called in-process is not killed: its monitor sees the cancel request and the
    flow records `cancelled` itself.)
    """
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo

    settings = load_settings()
    engine = open_registry(settings)
    try:
        live = repo.list_jobs(
            engine, status=["queued", "preprocessing", "model_loaded", "training"], limit=None
        )
        for job in (j for j in live if j.flow_run_id == str(flow_run.id)):
            finish_cancel(settings, engine, job)
    finally:
        engine.dispose()


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    from flows.params import dataset_display_name

    job = params.get("job_id") or "new"
    return run_name(
        dataset_display_name(str(params.get("dataset", "dataset"))), str(params.get("base_model", "")), job
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
    dataset: str,
    base_model: str,
    preset: PresetName | None = PresetName.balanced,
    hyperparameters: Hyperparameters | None = None,
    config: dict[str, Any] | None = None,
    compute: ComputeBackend | None = None,
    provisioning: ProvisioningPolicy | None = None,
    storage_url: str | None = None,
    webhook_url: str | None = None,
    job_name: str | None = None,
    dataset_options: DatasetOptions | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on `dataset` for `base_model` and register it.

    Args:
        dataset: training file (brightrun-lora-v4 JSON): a path, s3:// URI or https URL.
        base_model: hub id (meta-llama/Meta-Llama-3-8B) or local model directory.
        preset: conservative, balanced or aggressive; hyperparameters override it.
        hyperparameters: learning rate, epochs/max_steps, LoRA rank, quantization...
        config: any job-spec sections (as in a --config file), under the hyperparameters.
        compute: local (a subprocess here) or runpod; default BRIGHTRUN_COMPUTE.
        provisioning: RunPod GPU types, spot/on-demand, bid, budget and duration caps.
        storage_url: directory or s3://bucket/prefix; default BRIGHTRUN_STORAGE_URL.
        webhook_url: receives signed job updates (secret: BRIGHTRUN_WEBHOOK_SECRET).
        job_name: a label for the dashboard (default: the run name).
        dataset_options: quality threshold and validation fraction.
        job_id: resume this job (its data and checkpoints are reused).
    """
    raw = {
        "dataset": dataset,
        "base_model": base_model,
        "preset": preset,
        "hyperparameters": _as_dict(hyperparameters),
        "config": config or {},
        "compute": compute,
        "provisioning": _as_dict(provisioning),
        "storage_url": storage_url,
        "webhook_url": webhook_url,
        "job_name": job_name,
        "dataset_options": _as_dict(dataset_options),
    }
    settings = load_settings()
    # Before any row, file or pod exists: every problem at once, then stop.
    request = resolve_job_request({k: v for k, v in raw.items() if v is not None}, settings)
    return _run(settings, request, job_id)


def _as_dict(value: Any) -> Any:
    if value is None:
        return None
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else dict(value)


def _run(settings: Settings, request: JobRequest, resume_job_id: str | None) -> Any:
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.storage import open_storage

    logger = get_run_logger()
    attach_library_loggers()
    job_id = resume_job_id or new_job_id()
    layout = JobLayout(job_id)
    endpoint = settings.resolved_s3_endpoint_url
    storage = open_storage(request.storage_url, endpoint_url=endpoint)
    spec = request.spec.model_copy(update={"job_id": job_id})

    status = create_job_task(settings, request, job_id, storage.uri(layout.prefix))
    name = run_name(request.dataset_name, spec.base_model, job_id)
    rename_current_flow_run(name)
    logger.info(
        "job %s (%s): %s on %s, compute=%s",
        job_id,
        name,
        request.dataset_name,
        spec.base_model,
        request.compute.value,
    )

    engine = open_registry(settings)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    recorder = JobRecorder(
        engine=engine,
        job_id=job_id,
        notifier=WebhookNotifier(request.params.webhook_url, secret),
        reporter=RunReporter(job_id),
        flow_run_id=current_flow_run_id(),
        status_value=status,
    )
    if status == "queued":
        recorder.notifier.status_changed(recorder._payload("queued"))
    final_status, error_message = "failed", None
    bad_input = False
    try:
        if repo.get_job(engine, job_id).is_terminal:
            job = repo.get_job(engine, job_id)
            logger.info("job %s is already %s; nothing to do", job_id, job.status)
            return {"job_id": job_id, "status": job.status, "lora_artifact_path": job.lora_artifact_path}
        if not storage.exists(layout.spec):
            spec = _prepare_stage(settings, request, spec, storage, layout, recorder)
        else:
            logger.info("job %s: spec.json and data already in storage; resuming", job_id)
            spec = JobSpec.model_validate_json(storage.get_bytes(layout.spec))
        if recorder.cancel_requested():
            raise JobCancelled(f"job {job_id} was cancelled before training")
        outcome = _train(settings, request, spec, layout, storage, recorder)
        kind = outcome.kind.value
        if kind == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled ({outcome.reason})")
        if kind != "completed":
            raise BrightrunError(outcome.reason or f"job {job_id}: {kind}")
        # A trainer faster than one poll was never seen loading or training; it did both
        # (result.json says so), so the job passes through those statuses in order.
        for passed in statuses_for_phase("training", recorder.status_value):
            recorder.transition(passed)
        _register_adapter(recorder, request, storage, layout)
        final_status = "completed"
    except JobCancelled as exc:
        final_status, error_message = "cancelled", str(exc)
    except InputError as exc:
        final_status, error_message = "failed", str(exc)
        bad_input = True
    except BaseException as exc:  # noqa: BLE001  (record it, then let Prefect see it)
        final_status, error_message = "failed", f"{type(exc).__name__}: {exc}"
        _end(settings, request, spec, recorder, storage, layout, final_status, error_message)
        raise
    _end(settings, request, spec, recorder, storage, layout, final_status, error_message)
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


def _prepare_stage(
    settings: Settings,
    request: JobRequest,
    spec: JobSpec,
    storage: Any,
    layout: JobLayout,
    recorder: JobRecorder,
) -> JobSpec:
    from tasks.dataset import fetch_dataset_task, prepare_dataset_cached, render_report_markdown

    recorder.transition("preprocessing")
    source = fetch_dataset_task(
        request.params.dataset, settings.cache_dir / "datasets", settings.resolved_s3_endpoint_url
    )
    options = _prepare_options(request)
    out_dir = _prepared_dir(settings, Path(source), spec.base_model, options)
    report = prepare_dataset_cached(Path(source), spec.base_model, out_dir, options)
    recorder.reporter.dataset_report(render_report_markdown(report))
    recorder.event(
        "dataset_validated",
        0,
        {
            "source_sha256": report.source_sha256,
            "conversations": report.conversations,
            "train_examples": report.train.examples,
            "validation_examples": report.validation.examples,
            "trained_tokens": report.trained_tokens,
        },
    )
    register_job_training_file(
        recorder.engine,
        layout.job_id,
        name=report.source_name,
        storage_path=request.params.dataset,
        source_sha256=report.source_sha256,
        pairs=report.pairs,
        examples=report.sequences,
        prepared_dir=out_dir,
    )
    upload_prepared_task(storage.url, settings.resolved_s3_endpoint_url, out_dir, layout)
    spec = spec.model_copy(update={"dataset_sha256": report.source_sha256})
    write_spec_task(storage.url, settings.resolved_s3_endpoint_url, spec, layout)
    return spec


def _end(
    settings: Settings,
    request: JobRequest,
    spec: JobSpec,
    recorder: JobRecorder,
    storage: Any,
    layout: JobLayout,
    status: str,
    error_message: str | None,
) -> None:
    """Terminal bookkeeping: no pod left, the registry row final, the UI and webhook told."""
    logger = get_run_logger()
    if status != "completed":
        if status == "cancelled":
            try:
                storage.put_bytes(layout.cancel, b"cancelled\n")  # a local trainer stops at its next step
            except Exception as exc:
                logger.warning("could not write the cancel marker: %s", exc)
        left = _terminate_pods(settings, request, spec, recorder.job_id)
        if left:
            recorder.event("pod_terminated", 0, {"pods": left, "reason": status})
    try:
        recorder.transition(status, error_message=error_message)
    except Exception as exc:
        logger.error("job %s: could not record status %s: %s", recorder.job_id, status, exc)
    try:
        _finish_report(recorder, request, storage, layout, status, error_message)
    except Exception as exc:
        logger.warning("job %s: no summary (%s)", recorder.job_id, exc)
    recorder.flush()
    recorder.engine.dispose()
    logger.info("job %s %s%s", recorder.job_id, status, f": {error_message}" if error_message else "")
