"""`train_adapter`: a dataset in, a registered LoRA adapter out (DESIGN.md §3).

The body reads top to bottom: resolve the request → create the job (`queued`) → the dataset
stage (`preprocessing`) → write `spec.json` → train (a pod, watched, interruptions resumed;
`model_loaded`, `training`) → publish the adapter → end (`completed`, or `failed` with the
error, or `cancelled`). Every path ends with the job's pods terminated (`tasks.job.end_pods`).
The body (`run_training_job`) is the list of those calls, each handed the job's `JobRun`; the
stages' work lives in tasks/ (the cost estimate in tasks/estimate.py).

Start it from the Prefect UI (a deployment), a schedule, Python (`train_adapter(...)` or
`run_deployment("train_adapter/...")`) or `brightrun train`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Failed
from pydantic import SecretStr

from brightrun.compute import ComputeError
from brightrun.errors import BrightrunError, InputError
from brightrun.layout import JobLayout
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
from brightrun.storage import Storage
from flows.job_run import JobRun
from flows.params import ResolvedRequest, TrainRequest, dataset_display_name, resolve_train_request
from flows.seed_request import SeedHyperparameters, SeedRunpodConfig, job_seed_response
from flows.train_dataset import preprocess
from tasks.adapters.continue_from import lineage, resolve_init_adapter, stage_init_adapter
from tasks.adapters.fetch import LocalAdapter
from tasks.adapters.task import publish_adapter
from tasks.dataset.mixture import WeightedSource
from tasks.estimate import check_job_cost
from tasks.job import (
    JobRecorder,
    current_flow_run_id,
    end_pods,
    finish_cancel,
    new_job_id,
    rename_current_flow_run,
    statuses_for_phase,
    take_over_job,
)
from tasks.monitor import Outcome, run_job
from tasks.monitor.user_stop import STOPPED_BY_USER, user_stop_requested
from tasks.notify import WebhookNotifier
from tasks.reporting.job_summary import publish_job_summary
from tasks.reporting.names import run_name
from tasks.reporting.prefect_artifacts import RunReporter
from tasks.reporting.run_logs import attach_library_loggers, forward_trainer_logs

log = logging.getLogger("flows.train_adapter")

LIVE_STATUSES = ["queued", "preprocessing", "model_loaded", "training"]


class JobCancelled(BrightrunError):
    """The job was cancelled while it ran (UI, API or `brightrun jobs cancel`)."""


class JobStopped(BrightrunError):
    """Ctrl-C at the terminal (tasks/monitor/user_stop.py): `failed`, failure kind `stopped`,
    which `brightrun resume` continues."""


# ---------------------------------------------------------------- stages (one task each)


@task(name="create-job", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def queue_job(resources: Resources, resolved: ResolvedRequest, job_id: str, storage: Storage) -> str:
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
def write_spec(job: JobRun) -> str:
    """`spec.json` for the trainer. It never holds a secret: credentials reach the trainer
    through its environment only."""
    key = job.layout.spec
    job.storage.put_bytes(key, job.spec.model_dump_json(indent=2).encode())
    return job.storage.uri(key)


@task(name="train", retries=0, cache_policy=NO_CACHE)
def train(job: JobRun) -> Outcome:
    """Provision the trainer and watch it until it ends (a retried training would double-spend:
    interruptions are resumed inside)."""
    resources, spec, storage = job.resources, job.spec, job.storage
    compute = resources.compute(job.resolved.compute, spec.provisioning)
    if job.resolved.compute is ComputeBackend.runpod:
        check_job_cost(compute, spec, storage, job.recorder, get_run_logger())
    policy = monitor_policy(job.resolved.compute, spec.provisioning, job.resolved.request)
    # The trainer's log lines (logs/*.jsonl in storage, from any pod) into this run's logs.
    with forward_trainer_logs(storage, spec.job_id, interval_s=max(2.0, policy.poll_interval_seconds)):
        return run_job(
            compute=compute,
            storage=storage,
            job_id=spec.job_id,
            spec_uri=storage.uri(job.layout.spec),
            policy=policy,
            env=resources.trainer_env(storage.url),
            recorder=job.recorder,
            cancel=job.recorder.cancel_requested,
        )


def publish(job: JobRun) -> str:
    """Verify the adapter the trainer uploaded against its manifest, then register it."""
    recorder = job.recorder
    # A trainer faster than one poll was never seen loading or training; it did both
    # (result.json says so), so the job passes through those statuses in order.
    for passed in statuses_for_phase("training", recorder.status_value):
        recorder.transition(passed)
    artifact = publish_adapter(
        job.resources.registry,
        job.storage,
        job.job_id,
        base_model=job.spec.base_model,
        metadata=lineage(job.spec.init_adapter),
    )
    recorder.lora_artifact_path = artifact.storage_path
    return artifact.storage_path


# ---------------------------------------------------------------- helpers


def monitor_policy(
    compute: ComputeBackend, policy: ProvisioningPolicy, request: TrainRequest
) -> ProvisioningPolicy:
    """A local trainer is a subprocess beside us: poll it every second, not every ten (unless the
    caller set the poll interval; the UI's form sends an empty provisioning section)."""
    chosen = request.provisioning.model_fields_set if request.provisioning is not None else set()
    if compute is ComputeBackend.local and "poll_interval_seconds" not in chosen:
        return policy.model_copy(update={"poll_interval_seconds": 1.0})
    return policy


def prepare_or_reuse_data(job: JobRun) -> None:
    """The dataset stage and `spec.json`, unless an earlier run of this job already stored them."""
    if job.storage.exists(job.layout.spec):
        get_run_logger().info("job %s: spec.json and data already in storage; resuming", job.job_id)
        job.spec = JobSpec.model_validate_json(job.storage.get_bytes(job.layout.spec))
        return
    preprocess(job)
    if job.init_source is not None:
        init = stage_init_adapter(job.storage, job.job_id, job.init_source)
        job.spec = job.spec.model_copy(update={"init_adapter": init})
        job.recorder.event("init_adapter_staged", 0, lineage(init)["continued_from"])
        row = repo.get_job(job.recorder.engine, job.job_id)
        repo.update_job(job.recorder.engine, job.job_id, metadata={**row.metadata, **lineage(init)})
    write_spec(job)


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
    dataset = params.get("dataset") or (
        f"mixture-of-{len(params['datasets'])}"
        if params.get("datasets")
        else f"training-file-{str(params.get('training_file_id', ''))[:8]}"
    )
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
    datasets: list[WeightedSource] | None = None,
    init_adapter: str | None = None,
    preset: PresetName | None = PresetName.balanced,
    lora: LoraSettings | None = None,
    quantization: QuantizationSettings | None = None,
    training: TrainingSettings | None = None,
    checkpoint: CheckpointSettings | None = None,
    evaluation: EvaluationSettings | None = None,
    preprocessing: PreprocessingSettings | None = None,
    provisioning: ProvisioningPolicy | None = None,
    hyperparameters: SeedHyperparameters | None = None,
    runpod_config: SeedRunpodConfig | None = None,
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
        datasets: or several weighted training files, [{source, weight}] (path, URI or training_file_id).
        init_adapter: continue from this adapter (artifact id, job id or `production`).
        preset: conservative, balanced or aggressive; fields set below override it.
        lora: LoRA rank, alpha, dropout and target modules.
        quantization: 4-bit NF4 QLoRA (default) or plain LoRA.
        training: learning rate, epochs or max_steps, batch size, sequence length, seed.
        checkpoint: checkpoint cadence (steps, seconds) and how many to keep.
        evaluation: evaluation cadence and sample replies.
        preprocessing: quality threshold, validation fraction, over-long targets.
        provisioning: RunPod GPU types, spot/on-demand, bid, budget and duration caps.
        hyperparameters: the dashboard's start-job hyperparameters (flows/seed_request.py).
        runpod_config: the dashboard's gpu_type, instance_type (spot, on_demand), max_duration_hours.
        compute: local (a subprocess here) or runpod; default BRIGHTRUN_COMPUTE.
        storage_url: a directory or s3://bucket/prefix; default BRIGHTRUN_STORAGE_URL.
        webhook_url: receives signed job updates (secret: BRIGHTRUN_WEBHOOK_SECRET).
        job_name: a label for the dashboard (default: the run name).
        created_by: the user who started the job (auth.users id).
        job_id: resume this job (its data and checkpoints are reused).
    """
    # The signature lists TrainRequest's fields (tests/unit/test_flow_params.py compares them):
    # Prefect builds the deployment's form from the signature, so it stays written out.
    given = locals()
    raw = {name: given[name] for name in TrainRequest.model_fields}
    with Resources.from_settings() as resources:
        # Before any row, file or pod exists: every problem at once, then stop.
        resolved = resolve_train_request(raw, resources.settings)
        return run_training_job(resources, resolved, job_id)


def run_training_job(resources: Resources, resolved: ResolvedRequest, resume_job_id: str | None) -> Any:
    """job → dataset → spec → train → publish → end, holding the job's lease throughout: a
    second `brightrun resume` of the job is refused while this run lives (issue 20)."""
    from brightrun.registry.leases import LeaseKeeper, describe_holder

    attach_library_loggers()
    init_source = None
    if resolved.request.init_adapter:  # refused before any row exists (a resume checks it again)
        init_source = resolve_init_adapter(resources, resolved.request.init_adapter, resolved.spec)
    job_id = resume_job_id or new_job_id()
    holder = describe_holder("resume" if resume_job_id else "train", current_flow_run_id())
    ttl = resources.settings.job_lease_seconds
    with LeaseKeeper(resources.registry, job_id, holder, ttl_seconds=ttl):
        return _run_leased_job(resources, resolved, resume_job_id, job_id, init_source)


def _run_leased_job(
    resources: Resources,
    resolved: ResolvedRequest,
    resume_job_id: str | None,
    job_id: str,
    init_source: LocalAdapter | None,
) -> Any:
    job, ended = open_job(resources, resolved, resume_job_id, job_id=job_id)
    if ended is not None:
        return ended
    job.init_source = init_source
    status, error_message, bad_input, stopped = "failed", None, False, False
    try:
        prepare_or_reuse_data(job)
        if user_stop_requested():
            raise JobStopped(f"{STOPPED_BY_USER} before training")
        if job.recorder.cancel_requested():
            raise JobCancelled(f"job {job.job_id} was cancelled before training")
        outcome = train(job)
        raise_unless_completed(job, outcome)
        publish(job)
        status = "completed"
    except JobCancelled as exc:
        status, error_message = "cancelled", str(exc)
    except JobStopped as exc:
        status, error_message, stopped = "failed", str(exc), True
        job.recorder.failure_kind = "stopped"  # resumable: nothing of the job is lost
    except InputError as exc:
        status, error_message, bad_input = "failed", str(exc), True
        job.recorder.failure_kind = "input"
    except BaseException as exc:  # noqa: BLE001  (record it, then let Prefect see it)
        status, error_message = "failed", f"{type(exc).__name__}: {exc}"
        if _cancelled_from_prefect(exc, job.recorder):
            # Cancel in the Prefect UI: `serve` or the worker SIGTERMs this process; the pod
            # was terminated on the way out of the monitor; the job is cancelled, not failed.
            status, error_message = "cancelled", f"job {job.job_id} was cancelled from Prefect"
            get_run_logger().warning("job %s: cancelled from Prefect; terminating its pods", job.job_id)
        end_job(job, status, error_message)
        raise
    end_job(job, status, error_message)
    return flow_result(job, status, error_message, bad_input, stopped=stopped)


def open_job(
    resources: Resources, resolved: ResolvedRequest, resume_job_id: str | None, *, job_id: str | None = None
) -> tuple[JobRun, dict[str, Any] | None]:
    """The job's row (`queued`), the flow run's name, the recorder; a resume takes the job
    over. Returns the job, and the flow's result when the job had already ended."""
    logger = get_run_logger()
    job_id = job_id or resume_job_id or new_job_id()
    storage = resources.open_storage(resolved.storage_url)
    status = queue_job(resources, resolved, job_id, storage)
    name = run_name(resolved.dataset_name, resolved.spec.base_model, job_id)
    rename_current_flow_run(name)
    logger.info(
        "job %s (%s): %s on %s, compute=%s",
        job_id,
        name,
        resolved.dataset_name,
        resolved.spec.base_model,
        resolved.compute.value,
    )
    secret = resources.settings.webhook_secret
    recorder = JobRecorder(
        engine=resources.registry,
        job_id=job_id,
        notifier=WebhookNotifier(
            resolved.request.webhook_url,
            secret.get_secret_value() if secret else None,
            timeout_s=resources.settings.webhook_timeout_seconds,
            outbox=resources.registry,
            expiry_seconds=resources.settings.webhook_expiry_seconds,
        ),
        reporter=RunReporter(job_id),
        flow_run_id=current_flow_run_id(),
        status_value=status,
    )
    job = JobRun(resources, resolved, resolved.spec.model_copy(update={"job_id": job_id}), storage, recorder)
    existing = repo.get_job(resources.registry, job_id)
    if resume_job_id is not None:  # refuses a job resume cannot help; crashes the dead flow run
        existing = take_over_job(
            resources.registry,
            existing,
            current_flow_run_id(),
            trainer_failed=storage.exists(job.layout.failure),
        )
        recorder.status_value = existing.status
    if existing.is_terminal:
        logger.info("job %s is already %s; nothing to do", job_id, existing.status)
        return job, {
            "job_id": job_id,
            "status": existing.status,
            "lora_artifact_path": existing.lora_artifact_path,
        }
    if status == "queued":
        recorder.announce("queued")
    return job, None


def raise_unless_completed(job: JobRun, outcome: Outcome) -> None:
    """The monitor's outcome as the flow's control flow: cancelled and failed end the body."""
    if outcome.kind.value == "cancelled":
        raise JobCancelled(f"job {job.job_id} was cancelled ({outcome.reason})")
    if outcome.failure_kind == "stopped":
        raise JobStopped(outcome.reason)
    if outcome.kind.value != "completed":
        job.recorder.failure_kind = outcome.failure_kind  # `brightrun resume` reads it
        raise BrightrunError(outcome.reason or f"job {job.job_id}: {outcome.kind.value}")


def flow_result(
    job: JobRun, status: str, error_message: str | None, bad_input: bool, *, stopped: bool = False
) -> Any:
    """What the flow run returns: the result dict, Cancelled, Failed for a stop by the user
    (an expected end: no traceback on the screen), or the failure raised."""
    result = {
        "job_id": job.job_id,
        "status": status,
        "lora_artifact_path": job.recorder.lora_artifact_path,
        "error_message": error_message,
        "run_name": run_name(job.resolved.dataset_name, job.spec.base_model, job.job_id),
        **job_seed_response(job.recorder.engine, job.job_id, status),
    }
    if status == "cancelled":
        return Cancelled(message=error_message, data=result)
    if stopped:
        return Failed(message=error_message, data=result)
    if status == "failed":
        # Bad input keeps its type, so `brightrun train` exits 2 as for any other bad input.
        raise (InputError if bad_input else BrightrunError)(error_message or f"job {job.job_id} failed")
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


def end_job(job: JobRun, status: str, error_message: str | None) -> None:
    """Terminal bookkeeping: no pod left, the registry row final, the UI and webhook told."""
    logger = get_run_logger()
    recorder = job.recorder
    if status != "completed":
        try:
            ended = end_pods(
                job.resources,
                job.job_id,
                job.resolved.compute,
                reason=status,
                policy=job.spec.provisioning,
                cancel_in=job.storage if status == "cancelled" else None,
            )
        except ComputeError as exc:
            log.warning("job %s: could not check for leftover pods (%s); the reaper will", job.job_id, exc)
        else:
            if ended.unterminated:
                error_message = (
                    f"{error_message or status}; pod(s) {', '.join(ended.unterminated)} could not be "
                    "terminated (RunPod did not confirm): the reaper retries them, or run `brightrun reap`"
                )
    try:
        recorder.transition(status, error_message=error_message)
    except Exception as exc:
        logger.error("job %s: could not record status %s: %s", job.job_id, status, exc)
    try:
        publish_job_summary(
            job.recorder,
            job.storage,
            base_model=job.resolved.spec.base_model,
            dataset=job.resolved.dataset_name,
            status=status,
            error_message=error_message,
        )
    except Exception as exc:
        logger.warning("job %s: no summary (%s)", job.job_id, exc)
    recorder.flush()
    logger.info("job %s %s%s", job.job_id, status, f": {error_message}" if error_message else "")
