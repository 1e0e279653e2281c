"""`brightrun train`, `brightrun resume`, `brightrun demo`, `brightrun jobs cancel`.

Every command here runs the `train_adapter` Prefect flow, so a CLI run is a Prefect run
too: with `PREFECT_API_URL` set it shows up on that server; without it Prefect uses its
ephemeral local API.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import typer

from brightrun.errors import BrightrunError, InputError

DEMO_MAX_STEPS = 12
REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATASET = REPO / "examples" / "brightrun-sample.json"
CANCEL_WAIT_S = 30.0


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise InputError(f"--config {path}: not valid YAML/JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: must be a mapping of job spec sections (lora, training, ...)")
    return data


def run_training(params: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Run the flow in this process and return its result (raises on failure)."""
    from flows.train_adapter import train_adapter

    typer.secho(f"job {job_id}", bold=True)
    state = train_adapter(**params, job_id=job_id, return_state=True)
    result = state.result(raise_on_failure=False)
    if state.is_cancelled():
        typer.secho(f"job {job_id} cancelled", fg="yellow")
        raise typer.Exit(130)
    if isinstance(result, BaseException):
        raise result
    return dict(result)


def _print_result(result: dict[str, Any]) -> None:
    typer.secho(f"job {result['job_id']}: {result['status']}", fg="green", bold=True)
    if result.get("lora_artifact_path"):
        typer.echo(f"adapter: {result['lora_artifact_path']}")


def train(
    dataset: str = typer.Argument(..., help="Training file: path, s3:// URI or https URL"),
    base_model: str = typer.Option(..., "--base-model", help="HF hub id or local model directory"),
    preset: str = typer.Option("balanced", help="conservative | balanced | aggressive | none"),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON file of job spec sections"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    epochs: float | None = typer.Option(None, "--epochs"),
    seed: int | None = typer.Option(None, "--seed"),
    checkpoint_steps: int | None = typer.Option(None, "--checkpoint-steps"),
    learning_rate: float | None = typer.Option(None, "--learning-rate"),
    lora_r: int | None = typer.Option(None, "--lora-r"),
    no_quantize: bool = typer.Option(False, "--no-quantize", help="Plain LoRA instead of 4-bit QLoRA"),
    compute: str | None = typer.Option(None, "--compute", help="local | runpod (default BRIGHTRUN_COMPUTE)"),
    webhook_url: str | None = typer.Option(
        None, "--webhook-url", help="Signed with BRIGHTRUN_WEBHOOK_SECRET"
    ),
    storage_url: str | None = typer.Option(None, "--storage-url", help="Directory or s3://bucket/prefix"),
    job_name: str | None = typer.Option(None, "--job-name"),
) -> None:
    """Prepare DATASET and train a LoRA adapter on BASE_MODEL (a Prefect run of train_adapter)."""
    hyper = {
        "max_steps": max_steps,
        "epochs": epochs,
        "seed": seed,
        "checkpoint_steps": checkpoint_steps,
        "learning_rate": learning_rate,
        "lora_r": lora_r,
        "quantize": False if no_quantize else None,
    }
    params: dict[str, Any] = {
        "dataset": dataset,
        "base_model": base_model,
        "preset": None if preset.lower() == "none" else preset,
        "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
        "config": _load_config(config),
        "compute": compute,
        "webhook_url": webhook_url,
        "storage_url": storage_url,
        "job_name": job_name,
    }
    _print_result(run_training({k: v for k, v in params.items() if v is not None}, str(uuid.uuid4())))


def resume(job_id: str = typer.Argument(..., help="The job to continue")) -> None:
    """Continue a job whose process died: same data, from its last committed checkpoint."""
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings

    engine = open_registry(load_settings())
    try:
        job = repo.get_job(engine, job_id)
    finally:
        engine.dispose()
    if job.is_terminal:
        typer.echo(f"job {job_id} is already {job.status}; nothing to resume")
        return
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
        "hyperparameters": {
            "max_steps": max_steps,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_seq_length": 512,
            "learning_rate": 5e-3,
            "lora_r": 8,
            "lora_alpha": 16,
            "checkpoint_steps": 4,
            "sample_generations": 2,
        },
        "config": {
            "lora": {"target_modules": ["q_proj", "v_proj"]},
            "evaluation": {"max_new_tokens": 16},
            "training": {"gradient_checkpointing": False},
        },
        "compute": "local",
        "dataset_options": {"skip_overlong_targets": True},
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
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings
    from tasks.job import finish_cancel, request_cancel

    settings = load_settings()
    engine = open_registry(settings)
    try:
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
        finish_cancel(settings, engine, job)
        return repo.get_job(engine, job_id).status
    finally:
        engine.dispose()


def _cancel_flow_run(flow_run_id: str) -> None:
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling(message="brightrun jobs cancel"))
    except Exception as exc:  # the registry flag alone still stops a live flow
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
    """Add this area's commands to the `brightrun` app."""
    app.command("train")(train)
    app.command("resume")(resume)
    app.command("demo")(demo)
    try:
        from cli.registry import jobs_app
    except ImportError:  # the registry's `jobs` group is not in this build
        jobs_app = None
    if jobs_app is not None:
        jobs_app.command("cancel")(cancel)
