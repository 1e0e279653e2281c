"""The job spec: what the orchestrator writes to `spec.json` and the trainer runs.

No secrets ever go in here (credentials reach the pod through its env).
Validation reports every error at once (pydantic collects them per field and
the cross-field checks below add theirs to one list).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPEC_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Model):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    bias: Literal["none", "all", "lora_only"] = "none"


class QuantizationSettings(_Model):
    """4-bit NF4 QLoRA by default; `load_in_4bit=False` is plain LoRA."""

    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # bf16 compute on CUDA; on the CPU bitsandbytes also accepts bf16.
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # The dtype trainable LoRA weights are kept in. Pinned explicitly: with TRL + PEFT on a
    # 4-bit model they are bf16 in a fresh run but fp32 after a resume (DESIGN.md §4 trap).
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"


class TrainingSettings(_Model):
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of the run's optimizer steps spent warming up (the dashboard's field); "
        "when set it replaces warmup_steps",
    )
    epochs: float = Field(2.0, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set")
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(4, ge=1, le=1024)
    max_seq_length: int = Field(2048, ge=32, le=131072)
    gradient_checkpointing: bool = True
    optimizer: Literal["auto", "adamw_torch", "paged_adamw_8bit", "paged_adamw_32bit"] = Field(
        "auto", description="auto: paged_adamw_8bit on CUDA, adamw_torch on the CPU"
    )
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together so padding stays small"
    )
    packing: bool = Field(
        True,
        description="Pack each micro-batch into one row with per-example positions: no padding, no "
        "cross-example attention",
    )
    # Learning from thumbs (DPO, KTO): the objective and its TRL-default constants.
    objective: Literal["sft", "dpo", "kto"] = Field(
        "sft",
        description="sft: prepared conversations; dpo: chosen/rejected pairs; kto: unpaired thumbs up/down",
    )
    beta: float = Field(0.1, gt=0, le=10, description="DPO/KTO: strength of the pull towards the reference")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of thumbs-up examples' losses")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of thumbs-down examples' losses")


class CheckpointSettings(_Model):
    every_steps: int = Field(50, ge=1)
    every_seconds: float = Field(600.0, gt=0, description="Also checkpoint when this much time passed")
    keep_last: int = Field(2, ge=1, description="Committed checkpoints kept in storage")
    sigterm_grace_seconds: float = Field(
        5.0, ge=0, description="RunPod spot gives ~5 s; checkpoint on SIGTERM only if it fits"
    )


class EvaluationSettings(_Model):
    every_steps: int | None = Field(None, ge=1, description="None: evaluate at the end only")
    sample_generations: int = Field(3, ge=0, le=50)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int | None = Field(None, ge=1, description="Validation batch size (default: training's)")


class PreprocessingSettings(_Model):
    """How the dataset stage filters and splits (`JobSpec.preprocessing`). The split is by
    conversation, decided once by the dataset stage (with `training.seed`) and recorded;
    nothing re-derives it."""

    # The scale runs 1-5 and the sample files rate most targets 3, with 2 marking replies the
    # authors considered weak: those stay in the sequence as context but are never trained.
    min_quality: float = Field(
        3.0, ge=0, le=10, description="Targets whose quality_score is below this are context only"
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of conversations held out for validation"
    )
    skip_overlong_targets: bool = Field(
        False, description="Skip (and report) targets longer than max_seq_length instead of failing"
    )
    # Scaffolding balance (issue 19): no emotional arc may hold more than this share of the
    # training conversations; the cap drops training conversations only, seeded.
    max_arc_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Largest share of training conversations any one emotional_arc_key may hold",
    )


# The section was first called `dataset`; `dataset` is the training file everywhere else
# (flow parameter, CLI argument), so the section is `preprocessing`, like the job status.
DatasetSettings = PreprocessingSettings


class PresetName(StrEnum):
    conservative = "conservative"
    balanced = "balanced"
    aggressive = "aggressive"


# The seed's hyperparameter guide, exactly (rank, alpha, dropout, learning rate, epochs, batch
# size x gradient accumulation); warmup is ours (the guide names none).
PRESETS: dict[PresetName, dict[str, dict[str, object]]] = {
    PresetName.conservative: {
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        "training": {
            "learning_rate": 1e-4,
            "epochs": 2.0,
            "batch_size": 2,
            "gradient_accumulation_steps": 8,
            "warmup_steps": 20,
        },
    },
    PresetName.balanced: {
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {
            "learning_rate": 2e-4,
            "epochs": 3.0,
            "batch_size": 4,
            "gradient_accumulation_steps": 4,
            "warmup_steps": 10,
        },
    },
    PresetName.aggressive: {
        "lora": {"r": 32, "alpha": 64, "dropout": 0.1},
        "training": {
            "learning_rate": 3e-4,
            "epochs": 4.0,
            "batch_size": 4,
            "gradient_accumulation_steps": 4,
            "warmup_steps": 5,
        },
    },
}


class CapacityType(StrEnum):
    spot = "spot"
    on_demand = "on_demand"
    spot_then_on_demand = "spot_then_on_demand"


class ProvisioningPolicy(_Model):
    """How the RunPod backend rents GPUs. Ignored by the local backend."""

    gpu_types: list[str] = Field(
        default_factory=lambda: ["NVIDIA RTX A6000", "NVIDIA A40", "NVIDIA L40S"], min_length=1
    )
    gpu_count: int = Field(1, ge=1, le=8)
    capacity: CapacityType = CapacityType.spot_then_on_demand
    on_demand_after_interruptions: int = Field(2, ge=0)
    max_bid_per_gpu: float | None = Field(None, gt=0, description="USD/hr; None: the minimum bid")
    max_cost_usd: float = Field(25.0, gt=0)
    max_duration_hours: float = Field(12.0, gt=0)
    max_restarts: int = Field(5, ge=0)
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "ALL"
    container_disk_gb: int = Field(50, ge=10)
    network_volume_id: str | None = None
    volume_mount_path: str = "/workspace"
    image: str = "ghcr.io/brightrun/trainer:latest"
    poll_interval_seconds: float = Field(10.0, gt=0)
    heartbeat_timeout_seconds: float = Field(20.0, gt=0)
    api_outage_patience_seconds: float = Field(
        1800.0,
        gt=0,
        description="How long the monitor waits out an unreachable RunPod API (watching storage) "
        "before it fails the job as resumable",
    )
    startup_timeout_seconds: float = Field(
        1800.0, gt=0, description="Longest wait for a new pod's first heartbeat (image pull, model download)"
    )
    capacity_backoff_seconds: float = Field(
        5.0, ge=0, description="Pause after a capacity error before the next GPU type (doubles per round)"
    )
    capacity_rounds: int = Field(3, ge=1, description="Passes over the GPU list before giving up")
    seconds_per_step: dict[str, float] = Field(
        default_factory=dict, description="Measured seconds per optimizer step by GPU type (cost estimate)"
    )


class InitAdapter(_Model):
    """The adapter a job continues from, staged under the job's own prefix by the orchestrator
    (the trainer reads nothing else): its files, their manifest, and that manifest's sha256."""

    prefix: str = Field("init_adapter", min_length=1, description="Key prefix under the job's prefix")
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    artifact_id: str | None = Field(None, description="The registry's id of the adapter (for the record)")
    training_job_id: str | None = Field(None, description="The job that trained it (for the record)")


class JobSpec(_Model):
    """`spec.json`. Paths inside are relative to the job prefix unless they are URIs."""

    spec_version: int = SPEC_VERSION
    job_id: str = Field(min_length=1)
    job_name: str | None = None
    base_model: str = Field(min_length=1, description="HF hub id or a local path")
    base_model_revision: str | None = None
    dataset_prefix: str = "data"
    dataset_sha256: str | None = None
    preprocessing: PreprocessingSettings = Field(default_factory=PreprocessingSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    provisioning: ProvisioningPolicy = Field(default_factory=ProvisioningPolicy)
    preset: PresetName | None = None
    init_adapter: InitAdapter | None = Field(
        None, description="Start from this adapter's weights instead of a fresh LoRA"
    )
    heartbeat_seconds: float = Field(5.0, gt=0, le=300, description="How often status.json is rewritten")

    @model_validator(mode="after")
    def _cross_field(self) -> JobSpec:
        problems: list[str] = []
        if self.lora.alpha < self.lora.r / 4:
            problems.append(f"lora.alpha={self.lora.alpha} is far below lora.r={self.lora.r}")
        max_steps = self.training.max_steps
        if (
            max_steps is not None
            and self.training.warmup_ratio is None
            and self.training.warmup_steps > max_steps
        ):
            problems.append(
                f"training.warmup_steps={self.training.warmup_steps} exceeds training.max_steps={max_steps}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def warmup_steps(training: TrainingSettings, total_steps: int) -> int:
    """Warmup in optimizer steps: `warmup_ratio` of the run (rounded up, as transformers does)
    when set, else `warmup_steps`; never more than the run."""
    import math

    if training.warmup_ratio is not None:
        return min(total_steps, math.ceil(training.warmup_ratio * total_steps))
    return min(training.warmup_steps, total_steps)


def apply_preset(base: dict[str, object], preset: PresetName | str) -> dict[str, object]:
    """Preset values under whatever `base` already sets (explicit values win)."""
    preset = PresetName(preset)
    merged: dict[str, object] = {"preset": preset.value}
    for section, values in PRESETS[preset].items():
        explicit = base.get(section) or {}
        if not isinstance(explicit, dict):
            raise ValueError(f"{section} must be a mapping")
        merged[section] = {**values, **explicit}
    return {**base, **merged}


def parse_spec(data: dict[str, object] | str | bytes) -> JobSpec:
    """Validate a job spec (a mapping or JSON text) at the boundary, every problem at once.

    Raises `InputError` listing each bad field as `section.field: message`.
    """
    from pydantic import ValidationError

    from brightrun.errors import InputError, validation_problems

    try:
        if isinstance(data, str | bytes):
            return JobSpec.model_validate_json(data)
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc.errors(), empty="spec")
        raise InputError(
            f"the job spec has {len(problems)} problem(s); fix them and submit it again", problems
        ) from None
