"""What `train_adapter` accepts: one typed request, validated once, every error at once.

The request's sections are the job spec's own models (`lora`, `quantization`, `training`,
`checkpoint`, `evaluation`, `preprocessing`, `provisioning`), so an option has one name
everywhere: the CLI flag `--validation-fraction`, the flow parameter
`preprocessing.validation_fraction`, the config file's `preprocessing: {validation_fraction}`
and `spec.json` agree. Only the fields someone set count as explicit (pydantic's
`model_fields_set`); the preset fills the rest.

`resolve_train_request` turns the raw parameters into a `ResolvedRequest` (the job spec minus
its id, plus where things run) or raises one `InputError` naming every problem, before a job
row, a file or a pod exists.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from brightrun.errors import VALUE_ERRORS, InputError, validation_problems
from brightrun.settings import ComputeBackend, Settings
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
    apply_preset,
)
from flows.seed_request import SeedHyperparameters, SeedRunpodConfig, merge_seed_sections, seed_sections
from tasks.dataset.mixture import WeightedSource

PLACEHOLDER_JOB_ID = "pending"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

#: The request's job-spec sections, in spec order.
SPEC_SECTIONS = ("lora", "quantization", "training", "checkpoint", "evaluation", "preprocessing")


class TrainRequest(BaseModel):
    """Everything `train_adapter` accepts (the CLI, Python callers and the UI form share it)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None,
        description="Training file (brightrun-lora-v4 JSON; a preference JSONL for training.objective "
        "dpo/kto): a path, s3:// URI or https URL",
    )
    training_file_id: uuid.UUID | None = Field(
        None, description="Or: a training_files row (the app's way); its json_file_path is fetched"
    )
    base_model: str = Field(
        min_length=1, description="HF hub id (meta-llama/Meta-Llama-3-8B-Instruct) or a local model directory"
    )
    datasets: list[WeightedSource] | None = Field(
        None,
        description="Or: several training files with weights, [{source, weight}]; each source a path, "
        "URI or training_file_id; deduplicated, each keeping its own split",
        min_length=1,
    )
    init_adapter: str | None = Field(
        None,
        description="Continue from this adapter's weights: an artifact id, a job id, a served name or "
        "`production` (same base model, rank and target modules)",
    )
    preset: PresetName | None = Field(
        PresetName.balanced, description="conservative, balanced or aggressive; set fields override it"
    )
    lora: LoraSettings | None = Field(None, description="LoRA rank, alpha, dropout, target modules")
    quantization: QuantizationSettings | None = Field(None, description="4-bit NF4 QLoRA or plain LoRA")
    training: TrainingSettings | None = Field(
        None, description="Learning rate, epochs or max_steps, batch size, sequence length, seed"
    )
    checkpoint: CheckpointSettings | None = Field(None, description="Checkpoint cadence and retention")
    evaluation: EvaluationSettings | None = Field(None, description="Evaluation cadence, sample replies")
    preprocessing: PreprocessingSettings | None = Field(
        None, description="Quality threshold, validation fraction, over-long targets, arc cap"
    )
    provisioning: ProvisioningPolicy | None = Field(
        None, description="RunPod GPU types, spot/on-demand, bid, budget and duration caps"
    )
    hyperparameters: SeedHyperparameters | None = Field(
        None, description="The dashboard's hyperparameters (num_epochs, lora_r, warmup_ratio, ...)"
    )
    runpod_config: SeedRunpodConfig | None = Field(
        None, description="The dashboard's runpod_config (gpu_type, instance_type, max_duration_hours)"
    )
    compute: ComputeBackend | None = Field(None, description="local or runpod (default: BRIGHTRUN_COMPUTE)")
    storage_url: str | None = Field(
        None, description="A directory or s3://bucket/prefix (default: BRIGHTRUN_STORAGE_URL)"
    )
    webhook_url: str | None = Field(
        None, description="Receives signed job updates (BRIGHTRUN_WEBHOOK_SECRET)"
    )
    job_name: str | None = Field(None, description="A label for the dashboard (default: the run name)")
    created_by: uuid.UUID | None = Field(None, description="The user who started the job (auth.users id)")

    def explicit_sections(self) -> dict[str, dict[str, Any]]:
        """The spec sections as set by the caller: only the fields someone gave."""
        out: dict[str, dict[str, Any]] = {}
        for name in SPEC_SECTIONS:
            section = getattr(self, name)
            if section is not None:
                out[name] = section.model_dump(mode="json", include=section.model_fields_set)
        return out

    def recorded(self) -> dict[str, Any]:
        """The request as given (unset fields left out): stored with the job, so a resume or a
        rerun asks for exactly the same thing."""
        data = self.model_dump(mode="json", exclude_none=True, exclude=set(SPEC_SECTIONS) | {"provisioning"})
        if self.dataset is not None:
            data["dataset"] = without_query(self.dataset)  # never a signed URL's signature
        if self.datasets is not None:
            data["datasets"] = [
                {"source": without_query(d.source), "weight": d.weight} for d in self.datasets
            ]
        data.update(self.explicit_sections())
        if self.provisioning is not None:
            data["provisioning"] = self.provisioning.model_dump(
                mode="json", include=self.provisioning.model_fields_set
            )
        return data


class ResolvedRequest(BaseModel):
    """A validated request: the spec (with a placeholder job id) and where it runs."""

    request: TrainRequest
    spec: JobSpec
    compute: ComputeBackend
    storage_url: str
    dataset_name: str


def _problems(exc: ValidationError) -> list[str]:
    return validation_problems(exc.errors(), empty=None, show_input=VALUE_ERRORS, plain_value_errors=True)


def without_query(uri: str) -> str:
    """`https://h/f.json?X-Amz-Signature=…` -> `https://h/f.json`: what may be stored or logged."""
    parsed = urlparse(uri)
    if "://" not in uri or not (parsed.query or parsed.fragment):
        return uri
    return parsed._replace(query="", fragment="").geturl()


def dataset_display_name(dataset: str) -> str:
    """`s3://b/x/brightrun-sample.json?X-Amz-Signature=…` -> `brightrun-sample`."""
    name = urlparse(dataset).path if "://" in dataset else dataset
    name = name.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    for suffix in (".json", ".jsonl", ".gz"):
        name = name.removesuffix(suffix)
    return name


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def check_sources(
    dataset: str | None,
    training_file_id: uuid.UUID | None,
    datasets: list[WeightedSource] | None,
    objective: str = "sft",
) -> list[str]:
    """One of dataset, training_file_id or datasets; each of the datasets' files checked
    (`objective` dpo/kto: the file is a preference JSONL, checked by the dataset stage)."""
    given = [
        n
        for n, v in (("dataset", dataset), ("training_file_id", training_file_id), ("datasets", datasets))
        if v
    ]
    if len(given) > 1:
        return [
            f"{' and '.join(given)}: give one of them, not both"
            if len(given) == 2
            else f"{', '.join(given)}: give one of them"
        ]
    if not datasets:
        return check_dataset(dataset, training_file_id, objective)
    problems = []
    for i, entry in enumerate(datasets):
        try:
            uuid.UUID(entry.source)
            continue  # a training_files row, located when the job starts
        except ValueError:
            pass
        problems += [
            p.replace("dataset:", f"datasets.{i}.source:", 1) for p in check_dataset(entry.source, None)
        ]
    return problems


def check_dataset(
    dataset: str | None, training_file_id: uuid.UUID | None, objective: str = "sft"
) -> list[str]:
    if dataset is None and training_file_id is None:
        return [
            "dataset: give a training file (path, s3:// URI or https URL), a training_file_id, "
            "or datasets: [{source, weight}]"
        ]
    if dataset is not None and training_file_id is not None:
        return ["dataset and training_file_id: give one of them, not both"]
    if dataset is None:
        return []
    if "://" in dataset:
        scheme = urlparse(dataset).scheme
        if scheme not in ("s3", "http", "https", "file"):
            return [f"dataset: {dataset!r} has scheme {scheme!r}; use a path, s3://, https:// or file://"]
        return []
    path = Path(dataset).expanduser()
    if not path.is_file():
        where = f"{path} (from {Path.cwd()})" if not path.is_absolute() else str(path)
        return [f"dataset: {where} does not exist (give a training file path, s3:// URI or https URL)"]
    if objective != "sft":
        return []  # a preference file (JSONL), checked line by line by the dataset stage
    if path.suffix.lower() == ".jsonl":
        return [
            f"dataset: {path} is JSON Lines; the training file must be one brightrun-lora-v4 JSON "
            "document ({training_file_metadata, consultant_profile, conversations: [...]})"
        ]
    what = _not_a_json_document(path)
    if what:
        return [
            f"dataset: {path} is {what}; the training file must be one brightrun-lora-v4 JSON "
            "document ({training_file_metadata, consultant_profile, conversations: [...]})"
        ]
    return []


def check_local_contents(request: TrainRequest, settings: Settings) -> list[str]:
    """Every problem of each local training file's contents, located (conversation, pair,
    field), before a job row or Prefect exists: a bad file once started a job that failed 41 s
    later and left a `resume` hint. Files behind s3://, https:// or a training_file_id are
    checked by the dataset stage once fetched; a local one is read twice (here and there)."""
    from tasks.dataset.schema import validate_dataset

    if request.dataset:
        sources = [("dataset", request.dataset)]
    else:
        sources = [(f"datasets.{i}.source", e.source) for i, e in enumerate(request.datasets or [])]
    problems = []
    for where, source in sources:
        path = Path(source).expanduser()
        if "://" in source or not path.is_file():
            continue
        result = validate_dataset(path, settings.dataset_limits)
        problems += [f"{where} {path.name}: {message}" for message in result.messages()]
    return problems


def _not_a_json_document(path: Path) -> str | None:
    """What the file is instead of a JSON object, from its first bytes (a CSV, a JSON array,
    an empty file); None when it may be one. Compressed files are left to the dataset stage."""
    if path.suffix.lower() == ".gz":
        return None
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head:
        return "empty"
    if head[0] == "[":
        return "a JSON array"
    if head[0] != "{":
        return "not JSON"
    return None


def check_base_model(model: str) -> list[str]:
    if _looks_local(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            return [
                f"base_model: {path} is not a model directory (no config.json); "
                "give a local model directory or a hub id like meta-llama/Meta-Llama-3-8B-Instruct"
            ]
        return []
    if not _HF_ID.match(model):
        return [f"base_model: {model!r} is neither a local directory nor a hub id (org/name)"]
    return []


def _runpod_is_local() -> bool:
    """A RunPod endpoint on this machine (a local fake or proxy) starts pods that see our paths."""
    import os

    host = urlparse(os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")).hostname
    return host in ("127.0.0.1", "localhost", "::1")


def check_environment(request: TrainRequest, settings: Settings, compute: ComputeBackend) -> list[str]:
    problems = []
    storage_url = request.storage_url or settings.resolved_storage_url
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
            _looks_local(request.base_model)
            and not request.base_model.startswith("/workspace")
            and not _runpod_is_local()
        ):
            problems.append(
                f"base_model: {request.base_model!r} is a local path a RunPod pod cannot see; use a hub id"
            )
    if request.webhook_url:
        parsed = urlparse(request.webhook_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            problems.append(f"webhook_url: {request.webhook_url!r} is not an http(s) URL")
        if settings.webhook_secret is None:
            problems.append("webhook_url is set but BRIGHTRUN_WEBHOOK_SECRET is not: webhooks are signed")
    return problems


def build_job_spec(request: TrainRequest) -> JobSpec:
    """What the caller set, with the preset under it (explicit values win), as a job spec."""
    base: dict[str, Any] = dict(request.explicit_sections())
    seed = seed_sections(request.hyperparameters, request.runpod_config)
    provisioning = (
        request.provisioning.model_dump(mode="json", include=request.provisioning.model_fields_set)
        if request.provisioning is not None
        else {}
    )
    base, seed_problems = merge_seed_sections({**base, "provisioning": provisioning}, seed)
    if seed_problems:
        raise ValueError("; ".join(seed_problems))
    provisioning = base.pop("provisioning")
    explicit_training = dict(base.get("training", {}))
    if "warmup_ratio" in explicit_training and "warmup_steps" in explicit_training:
        raise ValueError("training.warmup_ratio and training.warmup_steps: give one of them, not both")
    if request.preset is not None:
        base = apply_preset(base, request.preset)
    training = base.get("training")
    # A short explicit run should not spend all its steps warming up.
    if (
        isinstance(training, dict)
        and training.get("max_steps") is not None
        and "warmup_steps" not in explicit_training
        and training.get("warmup_steps", 0) > training["max_steps"]
    ):
        training["warmup_steps"] = max(0, training["max_steps"] // 10)
    if request.provisioning is not None or provisioning:
        base["provisioning"] = provisioning
    base["base_model"] = request.base_model
    base["job_id"] = PLACEHOLDER_JOB_ID
    if request.job_name:
        base["job_name"] = request.job_name
    return JobSpec.model_validate(base)


def _partial_request(raw: dict[str, Any], exc: ValidationError) -> TrainRequest | None:
    """What did parse, so one attempt shows every problem (sources and environment too)."""
    bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    good = {k: v for k, v in raw.items() if k not in bad and k in TrainRequest.model_fields}
    good.setdefault("base_model", "-")
    try:
        return TrainRequest.model_validate(good)
    except ValidationError:
        return None


def resolve_train_request(raw: dict[str, Any] | TrainRequest, settings: Settings) -> ResolvedRequest:
    """Validate everything the flow was given; raise one InputError naming every problem."""
    problems: list[str] = []
    if isinstance(raw, TrainRequest):
        request = raw
    else:
        raw = dict(raw)
        if isinstance(raw.get("dataset"), SecretStr):
            raw["dataset"] = raw["dataset"].get_secret_value()
        # None means "not given", except for the preset, where it means "no preset".
        raw = {k: v for k, v in raw.items() if v is not None or k == "preset"}
        try:
            request = TrainRequest.model_validate(raw)
        except ValidationError as exc:
            problems = _problems(exc)
            partial = _partial_request(raw, exc)
            if partial is not None:
                compute = partial.compute or settings.compute
                if "dataset" in raw or "training_file_id" in raw or "datasets" in raw:
                    problems += check_sources(partial.dataset, partial.training_file_id, partial.datasets)
                if partial.base_model != "-":
                    problems += check_base_model(partial.base_model)
                problems += check_environment(partial, settings, compute)
            raise InputError("invalid train_adapter parameters (nothing was started)", problems) from None

    compute = request.compute or settings.compute
    objective = request.training.objective if request.training else "sft"
    problems += check_sources(request.dataset, request.training_file_id, request.datasets, objective)
    if objective != "sft" and request.datasets:
        problems.append(
            f"datasets: training.objective {objective} trains on one preference file "
            "(dataset=FILE.preferences.jsonl); a weighted mixture is for sft only"
        )
    if not problems and objective == "sft":
        problems += check_local_contents(request, settings)
    problems += check_base_model(request.base_model)
    problems += check_environment(request, settings, compute)
    spec: JobSpec | None = None
    try:
        spec = build_job_spec(request)
    except ValidationError as exc:
        problems += _problems(exc)
    except ValueError as exc:
        problems.append(f"parameters: {exc}")
    if problems or spec is None:
        raise InputError("invalid train_adapter parameters (nothing was started)", problems)
    name = (
        dataset_display_name(request.dataset)
        if request.dataset
        else f"mixture-of-{len(request.datasets)}"
        if request.datasets
        else f"training-file-{str(request.training_file_id)[:8]}"
    )
    return ResolvedRequest(
        request=request,
        spec=spec,
        compute=compute,
        storage_url=request.storage_url or settings.resolved_storage_url,
        dataset_name=name,
    )
