"""The seed dashboard's start-job request, taken as it is, and its response fields.

The dashboard sends `{training_file_id, hyperparameters{num_epochs, batch_size,
learning_rate, lora_r, lora_alpha, lora_dropout, warmup_ratio, gradient_accumulation_steps,
max_seq_length}, runpod_config{gpu_type, instance_type, max_duration_hours}}`; posted as a
flow run's parameters (Prefect's REST API, `POST /deployments/{id}/create_flow_run`) it is
a valid `train_adapter` call. Here its two sections become the job spec's own fields, as
explicit values (the preset fills the rest); a field also set in the spec's own section is
an error naming both, never a silent choice.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from brightrun.registry import repository as repo

log = logging.getLogger("brightrun.flows")

# The seed's GPU names -> RunPod's GPU type ids.
SEED_GPU_TYPES: dict[str, str] = {"H100_PCIE": "NVIDIA H100 PCIe", "A100_80GB": "NVIDIA A100 80GB PCIe"}


class SeedHyperparameters(BaseModel):
    """The dashboard's `hyperparameters` (every field optional: the preset fills the rest)."""

    model_config = ConfigDict(extra="forbid")

    num_epochs: float | None = Field(None, gt=0, le=100)
    batch_size: int | None = Field(None, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1.0)
    lora_r: int | None = Field(None, ge=1, le=1024)
    lora_alpha: int | None = Field(None, ge=1)
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024)
    max_seq_length: int | None = Field(None, ge=32, le=131072)


class SeedRunpodConfig(BaseModel):
    """The dashboard's `runpod_config`."""

    model_config = ConfigDict(extra="forbid")

    gpu_type: Literal["H100_PCIE", "A100_80GB"] | None = None
    instance_type: Literal["spot", "on_demand"] | None = None
    max_duration_hours: float | None = Field(None, gt=0)


_TRAINING = {
    "num_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "warmup_ratio": "warmup_ratio",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_seq_length": "max_seq_length",
}
_LORA = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}


def seed_sections(
    hyperparameters: SeedHyperparameters | None, runpod_config: SeedRunpodConfig | None
) -> dict[str, dict[str, Any]]:
    """The seed's fields as job-spec sections (`training`, `lora`, `provisioning`): only what
    the dashboard set."""
    out: dict[str, dict[str, Any]] = {}
    if hyperparameters is not None:
        given = hyperparameters.model_dump(exclude_none=True)
        for names, section in ((_TRAINING, "training"), (_LORA, "lora")):
            values = {names[k]: v for k, v in given.items() if k in names}
            if values:
                out[section] = values
    if runpod_config is not None:
        provisioning: dict[str, Any] = {}
        if runpod_config.gpu_type is not None:
            provisioning["gpu_types"] = [SEED_GPU_TYPES[runpod_config.gpu_type]]
        if runpod_config.instance_type is not None:
            provisioning["capacity"] = runpod_config.instance_type
        if runpod_config.max_duration_hours is not None:
            provisioning["max_duration_hours"] = runpod_config.max_duration_hours
        if provisioning:
            out["provisioning"] = provisioning
    return out


def merge_seed_sections(
    explicit: dict[str, dict[str, Any]], seed: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The spec's own sections with the seed's fields added; a field given both ways is a
    problem (returned, every one)."""
    merged = {k: dict(v) for k, v in explicit.items()}
    problems = []
    for section, values in seed.items():
        own = merged.setdefault(section, {})
        for field, value in values.items():
            if field in own and own[field] != value:
                problems.append(
                    f"{section}.{field}: set both in {section} ({own[field]!r}) and by the dashboard's "
                    f"request ({value!r}); give it once"
                )
            own[field] = value
    return merged, problems


def seed_response(
    job_id: str,
    status: str,
    runpod_pod_id: str | None,
    estimated_hours: float | None,
    estimated_cost_usd: float | None,
) -> dict[str, Any]:
    """The seed's start-job response fields, as the flow run's result carries them."""
    return {
        "training_job_id": job_id,
        "status": status,
        "runpod_pod_id": runpod_pod_id,
        "estimated_duration_minutes": round(estimated_hours * 60, 1) if estimated_hours is not None else None,
        "estimated_cost_usd": estimated_cost_usd,
    }


def job_seed_response(engine: Engine, job_id: str, status: str) -> dict[str, Any]:
    """The seed dashboard's response fields of a job, read back from the registry
    (training_job_id, runpod_pod_id, the estimates); only the id and status if it can't be read."""
    try:
        row = repo.get_job(engine, job_id)
        estimate = [e for e in repo.list_events(engine, job_id) if e.type == "cost_estimated"]
    except Exception as exc:  # the result still names the job and its status
        log.warning("job %s: no seed response fields (%s)", job_id, exc)
        return seed_response(job_id, status, None, None, None)
    hours = estimate[-1].payload.get("hours") if estimate else None
    return seed_response(job_id, status, row.runpod_pod_id, hours, row.estimated_cost_usd)
