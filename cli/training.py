"""`brightrun train`, `brightrun resume`, `brightrun demo`, `brightrun jobs cancel`.

Every command here runs the `train_adapter` Prefect flow, so a CLI run is a Prefect run
too: with `PREFECT_API_URL` set it shows up on that server; without it Prefect uses its
ephemeral local API. Parameters are checked before Prefect starts, so a typo costs
a second, not a server start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from brightrun.errors import BrightrunError, InputError, validation_problems

if TYPE_CHECKING:
    from tasks.estimate import EstimateText  # torch-free, but the CLI imports stages lazily

DEMO_MAX_STEPS = 12
REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATASET = REPO / "examples" / "brightrun-sample.json"
CANCEL_WAIT_S = 30.0
CONFIG_SECTIONS = (
    "lora",
    "quantization",
    "training",
    "checkpoint",
    "evaluation",
    "preprocessing",
    "provisioning",
)

PRESETS_HELP = (
    "conservative (LoRA r 8, alpha 16, lr 1e-4, 2 epochs, batch 2 x 8) | balanced (r 16, alpha 32, "
    "lr 2e-4, 3 epochs, 4 x 4) | aggressive (r 32, alpha 64, dropout 0.1, lr 3e-4, 4 epochs, 4 x 4) | "
    "none. Options you set override the preset."
)


def _yaml_loader() -> Any:
    """PyYAML's SafeLoader, reading `1e-4` as a number (YAML 1.1 reads it as a string)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
        list("-+0123456789."),
    )
    return Loader


def load_config_file(path: Path) -> dict[str, Any]:
    """A YAML/JSON file of job-spec sections, each checked strictly (`max_steps: "10"` is an
    error naming the file and the field, not a surprise later)."""
    import yaml
    from pydantic import ValidationError

    from flows.params import TrainRequest

    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_yaml_loader())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise InputError(f"--config {path}: not valid YAML/JSON ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(
            f"--config {path}: must be a mapping of job spec sections ({', '.join(CONFIG_SECTIONS)})"
        )
    problems = [
        f"{key}: not a job spec section (expected one of {', '.join(CONFIG_SECTIONS)})"
        for key in data
        if key not in CONFIG_SECTIONS
    ]
    for key in CONFIG_SECTIONS:
        if key not in data:
            continue
        model = TrainRequest.model_fields[key].annotation.__args__[0]  # type: ignore[union-attr]
        try:
            model.model_validate(data[key], strict=True)
        except ValidationError as exc:
            problems += validation_problems(exc.errors(), within=(key,), show_input=True)
    if problems:
        raise InputError(f"--config {path}: {len(problems)} problem(s)", problems)
    return data


def build_request(
    *,
    dataset: str | None,
    base_model: str,
    preset: str,
    config: Path | None,
    sections: dict[str, dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """The flow's parameters: the config file's sections, the flags over them."""
    params: dict[str, Any] = {"dataset": dataset, "base_model": base_model}
    params["preset"] = None if preset.lower() == "none" else preset
    merged = load_config_file(config) if config is not None else {}
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            merged[section] = {**(merged.get(section) or {}), **given}
    params.update(merged)
    params.update({k: v for k, v in fields.items() if v is not None})
    return {k: v for k, v in params.items() if v is not None or k == "preset"}


def run_training(params: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Check the parameters, then run the flow in this process; its result (raises on failure)."""
    from brightrun.settings import load_settings
    from flows.params import resolve_train_request

    resolve_train_request(params, load_settings())  # every problem at once, before Prefect starts
    from cli.progress import terminal_progress
    from flows.train_adapter import train_adapter

    # The job id is printed by the flow once its row exists (a run that dies before it would
    # otherwise leave a printed id that does not exist).
    # One live progress display on a terminal (plain lines per step elsewhere), then the summary.
    flow_params = dict(params)
    if "?" in str(flow_params.get("dataset", "")):
        # A signed URL: Prefect stores a flow run's parameters, and a SecretStr is stored masked.
        from pydantic import SecretStr

        flow_params["dataset"] = SecretStr(flow_params["dataset"])
    from cli.interrupt import EXIT_INTERRUPTED, ctrl_c_stops, exit_after_stop, resume_hint
    from tasks.monitor.user_stop import user_stop_requested

    with terminal_progress() as progress, prefect_startup_errors(), ctrl_c_stops(job_id) as ctrl_c:
        state = train_adapter(**flow_params, job_id=job_id, return_state=True)
    result = state.result(raise_on_failure=False)
    if user_stop_requested():
        typer.secho(resume_hint(job_id), fg="yellow", bold=True)
        if ctrl_c.presses:  # a person at a terminal, not a caller in this process
            exit_after_stop(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED)
    if state.is_cancelled():
        typer.secho(f"job {job_id} cancelled", fg="yellow")
        raise typer.Exit(130)
    if isinstance(result, BaseException):
        raise result
    return {**dict(result), "summary_printed": progress.finished is not None}


# Prefect's embedded server gets 20 s to start by default; a loaded machine needs more.
PREFECT_STARTUP_TIMEOUT_S = 120


@contextlib.contextmanager
def prefect_startup_errors() -> Iterator[None]:
    """A Prefect API that does not come up is a clean error with a hint (exit 1), not a
    traceback; and the embedded one gets longer to start unless the user chose a limit."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    from cli.prefect_watchdog import watch_embedded_prefect_server

    watch_embedded_prefect_server()  # a killed CLI takes its embedded Prefect server with it
    chosen = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ
    updates = {} if chosen else {STARTUP: PREFECT_STARTUP_TIMEOUT_S}
    try:
        with temporary_settings(updates=updates):
            yield
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise BrightrunError(
            "Prefect's embedded API server did not start in time (the machine may be busy); no job "
            "was created. Run the command again, set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
            "higher, or start a server (`prefect server start`) and set PREFECT_API_URL."
        ) from None


def _print_result(result: dict[str, Any]) -> None:
    if result.get("summary_printed"):
        return  # the progress display ended with the run's summary
    typer.secho(f"job {result['job_id']}: {result['status']}", fg="green", bold=True)
    if result.get("lora_artifact_path"):
        typer.echo(f"adapter: {result['lora_artifact_path']}")


def train(
    dataset: str | None = typer.Argument(
        None, help="Training file (brightrun-lora-v4 JSON): a path, s3:// URI or https URL"
    ),
    base_model: str = typer.Option(..., "--base-model", help="HF hub id or a local model directory"),
    training_file_id: str | None = typer.Option(
        None, "--training-file-id", help="Instead of DATASET: a training_files row (the app's way)"
    ),
    preset: str = typer.Option("balanced", "--preset", help=PRESETS_HELP),
    init_adapter: str | None = typer.Option(
        None,
        "--init-adapter",
        help="Continue from this adapter (artifact id, job id or `production`): same base, rank, targets",
    ),
    config: Path | None = typer.Option(
        None, "--config", help=f"YAML/JSON file of job spec sections ({', '.join(CONFIG_SECTIONS)})"
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps"),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the training set"),
    learning_rate: float | None = typer.Option(None, "--learning-rate", help="Peak learning rate"),
    warmup_ratio: float | None = typer.Option(
        None, "--warmup-ratio", help="Share of the steps spent warming up (instead of warmup_steps)"
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Examples per micro-batch"),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", help="Longest sequence in tokens"),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the data order and the split"),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank"),
    lora_alpha: int | None = typer.Option(None, "--lora-alpha", help="LoRA alpha"),
    no_quantize: bool = typer.Option(False, "--no-quantize", help="Plain LoRA instead of 4-bit QLoRA"),
    checkpoint_steps: int | None = typer.Option(None, "--checkpoint-steps", help="Checkpoint every N steps"),
    min_quality: float | None = typer.Option(
        None, "--min-quality", help="Targets scored below this are context only (default 3)"
    ),
    validation_fraction: float | None = typer.Option(
        None, "--validation-fraction", help="Share of conversations held out (default 0.1)"
    ),
    objective: str | None = typer.Option(
        None, "--objective", help="sft (default) | dpo | kto: dpo/kto train on a preference file (JSONL)"
    ),
    max_arc_share: float | None = typer.Option(
        None, "--max-arc-share", help="Cap any one emotional_arc_key at this share of the training set (0-1]"
    ),
    compute: str | None = typer.Option(None, "--compute", help="local | runpod (default BRIGHTRUN_COMPUTE)"),
    storage_url: str | None = typer.Option(None, "--storage-url", help="Directory or s3://bucket/prefix"),
    webhook_url: str | None = typer.Option(
        None, "--webhook-url", help="Signed with BRIGHTRUN_WEBHOOK_SECRET"
    ),
    job_name: str | None = typer.Option(None, "--job-name", help="A label for the dashboard"),
    created_by: str | None = typer.Option(
        None, "--created-by", help="The user starting the job (auth.users id)"
    ),
    estimate: bool = typer.Option(
        False, "--estimate", help="Print time and cost ranges per GPU type and exit (rents nothing)"
    ),
) -> None:
    """Prepare DATASET and train a LoRA adapter on BASE_MODEL (a Prefect run of train_adapter).

    Options override the preset; --config sets any job spec field (see brightrun/spec.py) and
    the options override it. With --estimate, nothing is rented or recorded: the dataset is
    prepared here and the time and cost ranges per GPU type are printed.
    """
    params = build_request(
        dataset=dataset,
        base_model=base_model,
        preset=preset,
        config=config,
        sections={
            "training": {
                "max_steps": max_steps,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "warmup_ratio": warmup_ratio,
                "batch_size": batch_size,
                "max_seq_length": max_seq_length,
                "seed": seed,
                "objective": objective,
            },
            "lora": {"r": lora_r, "alpha": lora_alpha},
            "quantization": {"load_in_4bit": False if no_quantize else None},
            "checkpoint": {"every_steps": checkpoint_steps},
            "preprocessing": {
                "min_quality": min_quality,
                "validation_fraction": validation_fraction,
                "max_arc_share": max_arc_share,
            },
        },
        training_file_id=training_file_id,
        init_adapter=init_adapter,
        compute=compute,
        storage_url=storage_url,
        webhook_url=webhook_url,
        job_name=job_name,
        created_by=created_by,
    )
    if estimate:
        estimated = estimate_job(params)
        typer.echo(estimated.text)
        if estimated.fit_problem is not None:  # the table is printed; the exit says it can't run
            raise InputError(estimated.fit_problem)
        return
    _print_result(run_training(params, str(uuid.uuid4())))


def estimate_job(params: dict[str, Any]) -> EstimateText:
    """Time and cost ranges of a job before anything is rented (tasks/estimate.py)."""
    from brightrun.resources import Resources
    from flows.params import resolve_train_request
    from tasks.estimate import estimate_dataset_file

    with Resources.from_settings() as resources:
        resolved = resolve_train_request(params, resources.settings)
        if resolved.request.dataset is None:
            raise InputError("--estimate needs a DATASET file (not --training-file-id)")
        if resolved.spec.training.objective != "sft":
            raise InputError(
                f"--estimate: training.objective {resolved.spec.training.objective} is not estimated "
                "(the time model is SFT's); run without --estimate, or estimate the SFT round"
            )
        return estimate_dataset_file(
            resources, resolved.spec, resolved.request.dataset, sample_dataset=SAMPLE_DATASET
        )


def resume(job_id: str = typer.Argument(..., help="The job to continue")) -> None:
    """Continue a job whose process died: same data, from its last committed checkpoint."""
    from brightrun.layout import JobLayout
    from brightrun.registry import repository as repo
    from brightrun.registry.leases import JobLeaseHeld, current_lease
    from brightrun.registry.short_ids import resolve_job_id
    from brightrun.resources import Resources
    from brightrun.storage import StorageError
    from tasks.job import resume_refusal

    with Resources.from_settings() as resources:
        job_id = resolve_job_id(resources.registry, job_id)
        job = repo.get_job(resources.registry, job_id)
        held = current_lease(resources.registry, job_id)  # the flow takes it for real (atomically)
        if held is not None:
            raise JobLeaseHeld(job_id, held.holder, held.acquired_at, held.expires_at)
        failure_marker = JobLayout(job.id).failure
        try:
            trainer_failed = job.status == "failed" and resources.job_storage(job).exists(failure_marker)
        except StorageError:
            trainer_failed = False  # the recorded failure kind decides
    refusal = resume_refusal(job, trainer_failed=trainer_failed)
    if refusal is not None:
        raise InputError(refusal)  # exit 2: nothing here resume can fix
    params = dict(job.metadata.get("params") or {})
    if not params:
        raise InputError(f"job {job_id} was not started by train_adapter (no parameters recorded)")
    _print_result(run_training(params, job_id))


def demo_params(model_dir: Path, max_steps: int = DEMO_MAX_STEPS) -> dict[str, Any]:
    """The embedded default end to end: tiny model, sample dataset, local compute and storage."""
    return {
        "dataset": str(SAMPLE_DATASET),
        "base_model": str(model_dir),
        "preset": "balanced",
        "training": {
            "max_steps": max_steps,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_seq_length": 512,
            "learning_rate": 5e-3,
            "gradient_checkpointing": False,
        },
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "checkpoint": {"every_steps": 4},
        "evaluation": {"sample_generations": 2, "max_new_tokens": 16},
        "preprocessing": {"skip_overlong_targets": True},
        "compute": "local",
        "job_name": "brightrun demo",
    }


def demo(
    max_steps: int = typer.Option(DEMO_MAX_STEPS, "--max-steps", help="Training steps (a demo: few)"),
    webhook_url: str | None = typer.Option(None, "--webhook-url"),
) -> None:
    """Build the tiny model if needed and run train_adapter on the sample dataset, all local."""
    from brightrun.settings import load_settings
    from brightrun.tiny_model import ensure_tiny_model

    settings = load_settings()
    model_dir = settings.home / "models" / "tiny-llama"
    typer.echo(f"tiny model: {model_dir}")
    ensure_tiny_model(model_dir, SAMPLE_DATASET)
    params = demo_params(model_dir, max_steps)
    if webhook_url:
        params["webhook_url"] = webhook_url
    _print_result(run_training(params, str(uuid.uuid4())))
    typer.echo(DEMO_NOISE_NOTE)
    typer.echo(demo_time_line(seconds_since_process_start(), os.cpu_count(), os.getloadavg()[0]))


DEMO_NOISE_NOTE = (
    "note: the demo's model is a tiny random network (a few MB, trained for seconds), so its replies "
    "are noise by design; the demo shows the pipeline end to end, not a useful adapter."
)


def seconds_since_process_start() -> float:
    """Wall time since this process began (imports included, as the user waited for them)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(") ", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: from the CLI's import instead
        return time.monotonic() - _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


def demo_time_line(seconds: float, cores: int | None, load: float) -> str:
    """The demo's time with the conditions it ran under: a figure without them misleads (a
    loaded 2-core machine takes several times a quiet one's)."""
    return f"demo took {seconds:.0f} s on {cores or '?'} cores, load average {load:.1f} (1 min)"


def cancel_job(
    job_id: str,
    *,
    wait_s: float = CANCEL_WAIT_S,
    poll_s: float = 0.5,
) -> str:
    """Cancel a job: ask its flow run to stop, then make sure its pods are gone.

    The running flow sees the request within a poll, terminates the pod and records
    `cancelled`. If it does not within `wait_s` (its process died), do it from here.
    """
    from brightrun.registry import repository as repo
    from brightrun.registry.short_ids import resolve_job_id
    from brightrun.resources import Resources
    from tasks.job import finish_cancel, request_cancel

    with Resources.from_settings() as resources:
        engine = resources.registry
        job_id = resolve_job_id(engine, job_id)
        job = request_cancel(engine, job_id)
        if job.is_terminal:
            return job.status
        if job.flow_run_id:
            _cancel_flow_run(job.flow_run_id)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = repo.get_job(engine, job_id)
            if job.is_terminal:
                return job.status
            time.sleep(poll_s)
        finish_cancel(resources, job)
        return repo.get_job(engine, job_id).status


def _cancel_flow_run(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException
    from prefect.states import Cancelling

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling(message="brightrun jobs cancel"))
    except (PrefectException, OSError) as exc:  # the registry flag alone still stops a live flow
        logging.getLogger("brightrun.job").warning("could not cancel flow run %s: %s", flow_run_id, exc)


def cancel(job_id: str = typer.Argument(..., help="The job to cancel")) -> None:
    """Cancel a job: stop its Prefect flow run, terminate its pod within 30 s, mark it cancelled."""
    status = cancel_job(job_id)
    if status != "cancelled":
        typer.echo(f"job {job_id} is {status}")
        if status not in ("completed", "failed"):
            raise BrightrunError(f"job {job_id} is still {status}; run the command again or check its pod")
        return
    typer.secho(f"job {job_id} cancelled", fg="yellow")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app (`jobs cancel` joins the registry's
    `jobs` group)."""
    from cli.registry import jobs_app

    app.command("train")(train)
    app.command("resume")(resume)
    app.command("demo")(demo)
    jobs_app.command("cancel")(cancel)
