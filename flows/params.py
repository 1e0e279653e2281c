"""The `train_adapter` parameters: one typed model, validated once, every error at once.

The Prefect UI renders the flow's signature (these types) as a form; the CLI and Python
callers pass the same fields. `resolve_job_request` turns the raw parameters into a
validated `JobRequest` (the job spec minus its id, plus where things run) or raises one
`InputError` listing every problem found, before a job row, a file or a pod exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brightrun.errors import InputError
from brightrun.settings import ComputeBackend, Settings
from brightrun.spec import JobSpec, PresetName, ProvisioningPolicy, apply_preset

PLACEHOLDER_JOB_ID = "pending"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class Hyperparameters(BaseModel):
    """The knobs people turn most. Unset fields keep the preset's (or the config file's) value."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float | None = Field(None, gt=0, le=1.0)
    epochs: float | None = Field(None, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps")
    batch_size: int | None = Field(None, ge=1, le=1024)
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024)
    max_seq_length: int | None = Field(None, ge=32, le=131072)
    warmup_steps: int | None = Field(None, ge=0)
    seed: int | None = None
    lora_r: int | None = Field(None, ge=1, le=1024)
    lora_alpha: int | None = Field(None, ge=1)
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    quantize: bool | None = Field(None, description="4-bit NF4 QLoRA (default) or plain LoRA")
    checkpoint_steps: int | None = Field(None, ge=1)
    checkpoint_seconds: float | None = Field(None, gt=0)
    sample_generations: int | None = Field(None, ge=0, le=50)

    def as_spec_overrides(self) -> dict[str, dict[str, Any]]:
        """Nested job-spec sections holding only the fields set here."""
        where = {
            "learning_rate": ("training", "learning_rate"),
            "epochs": ("training", "epochs"),
            "max_steps": ("training", "max_steps"),
            "batch_size": ("training", "batch_size"),
            "gradient_accumulation_steps": ("training", "gradient_accumulation_steps"),
            "max_seq_length": ("training", "max_seq_length"),
            "warmup_steps": ("training", "warmup_steps"),
            "seed": ("training", "seed"),
            "lora_r": ("lora", "r"),
            "lora_alpha": ("lora", "alpha"),
            "lora_dropout": ("lora", "dropout"),
            "quantize": ("quantization", "load_in_4bit"),
            "checkpoint_steps": ("checkpoint", "every_steps"),
            "checkpoint_seconds": ("checkpoint", "every_seconds"),
            "sample_generations": ("evaluation", "sample_generations"),
        }
        out: dict[str, dict[str, Any]] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            section, field = where[name]
            out.setdefault(section, {})[field] = value
        return out


class DatasetOptions(BaseModel):
    """How the dataset stage filters and splits (passed to the dataset stage's PrepareOptions)."""

    model_config = ConfigDict(extra="forbid")

    min_quality: float | None = Field(None, ge=0, le=10)
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    skip_overlong_targets: bool | None = Field(
        None, description="Skip (and report) targets longer than max_seq_length instead of failing"
    )


class TrainAdapterParams(BaseModel):
    """Everything `train_adapter` accepts, as one model (CLI, Python and UI share it)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, description="A training file: local path, s3:// URI or https URL")
    base_model: str = Field(min_length=1, description="HF hub id (meta-llama/Meta-Llama-3-8B) or local path")
    preset: PresetName | None = Field(PresetName.balanced, description="conservative, balanced, aggressive")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    config: dict[str, Any] = Field(
        default_factory=dict, description="Any job spec sections (lora, training, ...), under the flags"
    )
    compute: ComputeBackend | None = Field(None, description="local or runpod (default: BRIGHTRUN_COMPUTE)")
    provisioning: ProvisioningPolicy | None = Field(None, description="GPU types, spot/on-demand, budget")
    storage_url: str | None = Field(None, description="Directory or s3://bucket/prefix (default: settings)")
    webhook_url: str | None = Field(None, description="POST job updates here (signed, DESIGN §7)")
    job_name: str | None = None
    dataset_options: DatasetOptions = Field(default_factory=DatasetOptions)


class JobRequest(BaseModel):
    """A validated request: the spec (with a placeholder job id) and where it runs."""

    params: TrainAdapterParams
    spec: JobSpec
    compute: ComputeBackend
    storage_url: str
    dataset_name: str


def _loc(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "parameters"


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for error in exc.errors():
        where = _loc(error)
        msg = error["msg"]
        if error["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        out.append(f"{prefix}{where}: {msg}" if where != "parameters" else f"{prefix}{msg}")
    return out


def dataset_display_name(dataset: str) -> str:
    """`s3://b/x/brightrun-sample.json` -> `brightrun-sample`."""
    name = urlparse(dataset).path if "://" in dataset else dataset
    name = name.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    for suffix in (".json", ".jsonl", ".gz"):
        name = name.removesuffix(suffix)
    return name


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def _check_sources(params: TrainAdapterParams) -> list[str]:
    problems = []
    dataset = params.dataset
    if "://" in dataset:
        scheme = urlparse(dataset).scheme
        if scheme not in ("s3", "http", "https", "file"):
            problems.append(
                f"dataset: {dataset!r} has scheme {scheme!r}; use a path, s3://, https:// or file://"
            )
    else:
        path = Path(dataset).expanduser()
        if not path.is_file():
            problems.append(f"dataset: {path} does not exist (give a training file path or an s3:// URI)")
    model = params.base_model
    if _looks_local(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            problems.append(
                f"base_model: {path} is not a model directory (no config.json); "
                "give a local model directory or a hub id like meta-llama/Meta-Llama-3-8B"
            )
    elif not _HF_ID.match(model):
        problems.append(f"base_model: {model!r} is neither a local directory nor a hub id (org/name)")
    return problems


def _runpod_is_local() -> bool:
    """A RunPod endpoint on this machine (a local fake or proxy) starts pods that see our paths."""
    import os

    host = urlparse(os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")).hostname
    return host in ("127.0.0.1", "localhost", "::1")


def _check_environment(params: TrainAdapterParams, settings: Settings, compute: ComputeBackend) -> list[str]:
    problems = []
    storage_url = params.storage_url or settings.resolved_storage_url
    if "://" in storage_url and not storage_url.startswith(("s3://", "file://")):
        problems.append(f"storage_url: {storage_url!r}: use a directory or s3://bucket/prefix")
    if compute is ComputeBackend.runpod:
        if settings.runpod_api_key is None:
            problems.append("compute=runpod needs RUNPOD_API_KEY in the environment (or a Prefect Secret)")
        if not storage_url.startswith("s3://"):
            problems.append(
                f"compute=runpod needs object storage the pod can reach (s3://...), not {storage_url!r}; "
                "set BRIGHTRUN_STORAGE_URL"
            )
        if (
            _looks_local(params.base_model)
            and not params.base_model.startswith("/workspace")
            and not _runpod_is_local()
        ):
            problems.append(
                f"base_model: {params.base_model!r} is a local path a RunPod pod cannot see; use a hub id"
            )
    if params.webhook_url:
        parsed = urlparse(params.webhook_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            problems.append(f"webhook_url: {params.webhook_url!r} is not an http(s) URL")
        if settings.webhook_secret is None:
            problems.append("webhook_url is set but BRIGHTRUN_WEBHOOK_SECRET is not: webhooks are signed")
    return problems


def build_spec_dict(params: TrainAdapterParams) -> dict[str, Any]:
    """config file < preset < explicit flags, as nested job-spec sections."""
    base: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in params.config.items()}
    for section, values in params.hyperparameters.as_spec_overrides().items():
        existing = base.get(section) or {}
        base[section] = {**existing, **values} if isinstance(existing, dict) else values
    if params.preset is not None:
        base = apply_preset(base, params.preset)
    training = base.get("training")
    if isinstance(training, dict) and training.get("max_steps") is not None:
        # A short explicit run should not spend all its steps warming up.
        preset_warmup = "warmup_steps" not in params.hyperparameters.model_dump(exclude_none=True)
        if preset_warmup and training.get("warmup_steps", 0) > training["max_steps"]:
            training["warmup_steps"] = max(0, training["max_steps"] // 10)
    if params.provisioning is not None:
        base["provisioning"] = params.provisioning.model_dump()
    base["base_model"] = params.base_model
    base["job_id"] = PLACEHOLDER_JOB_ID
    if params.job_name:
        base["job_name"] = params.job_name
    return base


def resolve_job_request(raw: dict[str, Any], settings: Settings) -> JobRequest:
    """Validate everything the flow was given; raise one InputError naming every problem."""
    problems: list[str] = []
    try:
        params = TrainAdapterParams.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc)
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        # Check what did parse too, so one attempt shows every problem.
        good = {k: v for k, v in raw.items() if k not in bad and k in TrainAdapterParams.model_fields}
        try:
            partial = TrainAdapterParams.model_validate(
                {"dataset": "-", "base_model": "-", **good, "hyperparameters": {}, "config": {}}
            )
        except ValidationError:
            partial = None
        if partial is not None:
            compute = partial.compute or settings.compute
            problems += [
                p for p in _check_sources(partial) if not p.startswith(("dataset: -", "base_model: '-'"))
            ]
            problems += _check_environment(partial, settings, compute)
        raise InputError("invalid train_adapter parameters (nothing was started)", problems) from None

    compute = params.compute or settings.compute
    problems += _check_sources(params)
    problems += _check_environment(params, settings, compute)
    spec: JobSpec | None = None
    try:
        spec_dict = build_spec_dict(params)
        spec = JobSpec.model_validate(spec_dict)
    except ValidationError as exc:
        problems += _problems(exc)
    except ValueError as exc:
        problems.append(f"config: {exc}")
    if problems or spec is None:
        raise InputError("invalid train_adapter parameters (nothing was started)", problems)
    return JobRequest(
        params=params,
        spec=spec,
        compute=compute,
        storage_url=params.storage_url or settings.resolved_storage_url,
        dataset_name=dataset_display_name(params.dataset),
    )
