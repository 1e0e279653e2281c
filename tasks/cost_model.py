"""What a training job will take, before anything is rented: time, cost and GPU memory from
first principles (issue 16). Pure functions: the caller reads prices, the prepared meta and
any local config.json; nothing here does I/O.

Step time. A QLoRA step over T tokens of a model with N parameters does about 6·N·T FLOPs:
2N forward, 2N backward through the frozen weights (activation gradients; the frozen
weights get no weight gradient), and 2N again for the forward that gradient
checkpointing recomputes. That is also the conventional "model FLOPs" of MFU (6·N per
token), which the trainer and `benchmarks/gpu_check.py` report, so a measured MFU plugs
straight into `utilisation` here. Seconds per step = 6·N·T / (peak bf16 FLOP/s · MFU ·
GPUs · data-parallel efficiency). The default MFU range is an assumption until the GPU
check has run on the GPU in question (bitsandbytes 4-bit dequantisation keeps QLoRA well
below full-precision MFU); a measured `provisioning.seconds_per_step` wins over all of it.

Start-up per attempt: pod start and image pull, the model download (bf16 safetensors,
2 bytes per parameter; none when a network volume already holds the hub cache) and the
load with 4-bit quantisation.

Memory per GPU (data parallel keeps a whole model on each GPU): 4-bit base weights with
double quantisation (~4.13 bits per parameter) except the embeddings and LM head, which
stay bf16; LoRA weights, gradients and optimizer moments; checkpointed activations (one
hidden state per layer per token), one layer's working set while it is recomputed, the
fp32 logits of the loss; and a fixed CUDA context and allocator margin. A model that does
not fit one GPU needs sharded training (FSDP), which is not supported yet: said before
renting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brightrun.errors import BrightrunError, InputError
from brightrun.spec import JobSpec, ProvisioningPolicy
from brightrun.steps import tokens_per_micro_batch
from brightrun.steps import total_steps as _total_steps
from tasks.provision import capacity_plan

# GPUs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuType:
    """A GPU by its RunPod type id; dense bf16 tensor-core peak (no sparsity)."""

    id: str
    memory_gb: float
    bf16_tflops: float


GPUS: dict[str, GpuType] = {
    g.id: g
    for g in (
        GpuType("NVIDIA H100 PCIe", 80, 756),
        GpuType("NVIDIA H100 80GB HBM3", 80, 989),  # SXM
        GpuType("NVIDIA H100 NVL", 94, 835),
        GpuType("NVIDIA H200", 141, 989),
        GpuType("NVIDIA A100 80GB PCIe", 80, 312),
        GpuType("NVIDIA A100-SXM4-80GB", 80, 312),
        GpuType("NVIDIA L40S", 48, 362),
        GpuType("NVIDIA RTX A6000", 48, 155),
        GpuType("NVIDIA A40", 48, 150),
    )
}
# The GPUs `brightrun train --estimate` shows when the job names no others.
ESTIMATE_GPUS = (
    "NVIDIA H200",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA H100 PCIe",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA L40S",
    "NVIDIA RTX A6000",
)


def gpu_type(name: str) -> GpuType | None:
    """A GPU by RunPod id, or by a CUDA device name such as "NVIDIA H100 80GB HBM3"."""
    if name in GPUS:
        return GPUS[name]
    folded = name.upper().replace("-", " ")
    for key, short in (
        ("H200", "NVIDIA H200"),
        ("H100 PCIE", "NVIDIA H100 PCIe"),
        ("H100 NVL", "NVIDIA H100 NVL"),
    ):
        if key in folded:
            return GPUS[short]
    for key, short in (("H100", "NVIDIA H100 80GB HBM3"), ("A100", "NVIDIA A100 80GB PCIe")):
        if key in folded:
            return GPUS[short]
    for key, short in (("L40S", "NVIDIA L40S"), ("A6000", "NVIDIA RTX A6000"), ("A40", "NVIDIA A40")):
        if key in folded:
            return GPUS[short]
    return None


# models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's shapes (what its config.json says)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by PEFT module name."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.module_shapes().values()) + 2 * self.hidden
        return self.layers * per_layer + self.embedding_parameters + self.hidden

    def lora_parameters(self, r: int, target_modules: Sequence[str]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules if m in shapes)


LLAMA3_8B = ModelShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
LLAMA3_70B = ModelShape(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256)
KNOWN_MODELS: dict[str, ModelShape] = {
    f"meta-llama/{name}{suffix}": shape
    for base, shape in (("8B", LLAMA3_8B), ("70B", LLAMA3_70B))
    for name in (f"Meta-Llama-3-{base}", f"Llama-3.1-{base}", f"Meta-Llama-3.1-{base}", f"Llama-3.3-{base}")
    for suffix in ("", "-Instruct")
}


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """A ModelShape from a Hugging Face config.json mapping (Llama, Mistral, Qwen2 keys)."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the model's config.json lacks a usable {exc}; cannot size the model") from None


def model_shape(base_model: str, config: Mapping[str, Any] | None = None) -> ModelShape:
    """The model's shape: its config.json when the caller read one, else the hub id table."""
    if config is not None:
        return shape_from_config(config)
    shape = KNOWN_MODELS.get(base_model)
    if shape is None:
        raise InputError(
            f"no size known for base model {base_model!r}: give a local model directory with a "
            f"config.json, or one of {', '.join(sorted(KNOWN_MODELS)[:4])}, ..."
        )
    return shape


# memory -------------------------------------------------------------------------------------

GB = 1e9
# Bits per base weight in 4-bit NF4 with double quantisation (blocks of 64, fp8 absmax).
NF4_BITS = 4.127
# LoRA weight (fp32) + its gradient (fp32) + two 8-bit Adam moments (+ paging slack).
LORA_BYTES_PER_PARAM = 4 + 4 + 2 + 2
# CUDA context, cuBLAS workspaces and allocator fragmentation.
FIXED_OVERHEAD_GB = 3.0
FRAGMENTATION = 1.10


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gb: float
    adapter_gb: float
    activations_gb: float
    logits_gb: float
    total_gb: float
    tokens_per_micro_batch: int

    def fits(self, gpu: GpuType) -> bool:
        return self.total_gb <= gpu.memory_gb

    def describe(self) -> str:
        return (
            f"{self.total_gb:.1f} GB per GPU (4-bit weights {self.weights_gb:.1f}, LoRA + optimizer "
            f"{self.adapter_gb:.1f}, activations {self.activations_gb:.1f}, logits {self.logits_gb:.1f}; "
            f"{self.tokens_per_micro_batch} tokens per micro-batch)"
        )


def memory_estimate(shape: ModelShape, spec: JobSpec) -> MemoryEstimate:
    """Peak GPU memory of one rank at the job's settings (worst micro-batch: every example at
    max_seq_length, packed into one row)."""
    t, q = spec.training, spec.quantization
    tokens = t.batch_size * t.max_seq_length
    h, i = shape.hidden, shape.intermediate
    base = shape.parameters - shape.embedding_parameters
    # bitsandbytes leaves the embeddings and the LM head in bf16.
    weights = base * NF4_BITS / 8 + shape.embedding_parameters * 2 if q.load_in_4bit else shape.parameters * 2
    adapter_dtype_bytes = 4 if q.adapter_dtype == "float32" else 2
    lora = shape.lora_parameters(spec.lora.r, spec.lora.target_modules)
    adapter = lora * (LORA_BYTES_PER_PARAM - 4 + adapter_dtype_bytes)
    # One layer's working set (bf16): attention in/out, q/k/v, MLP gate/up/act/down inputs.
    layer_working = tokens * (6 * h + 4 * i) * 2
    if t.gradient_checkpointing:
        activations = shape.layers * tokens * h * 2 + 2 * layer_working
    else:
        activations = shape.layers * layer_working
    # bf16 logits, their fp32 copy for the loss, log-softmax and its gradient.
    logits = tokens * shape.vocab * (2 + 4 + 4 + 4)
    total = (weights + adapter + activations + logits) * FRAGMENTATION + FIXED_OVERHEAD_GB * GB
    return MemoryEstimate(
        weights_gb=weights / GB,
        adapter_gb=adapter / GB,
        activations_gb=activations / GB,
        logits_gb=logits / GB,
        total_gb=total / GB,
        tokens_per_micro_batch=tokens,
    )


def fit_problem(shape: ModelShape, spec: JobSpec, gpu: GpuType) -> str | None:
    """Why the job cannot train on one `gpu`, or None when it fits."""
    memory = memory_estimate(shape, spec)
    if memory.fits(gpu):
        return None
    t = spec.training
    smallest = spec.model_copy(update={"training": t.model_copy(update={"batch_size": 1})})
    if not memory_estimate(shape, smallest).fits(gpu):
        return (
            f"{shape.parameters / 1e9:.0f}B parameters need {memory.total_gb:.0f} GB per GPU "
            f"({memory_estimate(shape, smallest).total_gb:.0f} GB even at batch_size 1) and {gpu.id} has "
            f"{gpu.memory_gb:.0f} GB: the model does not fit one GPU, and sharded training (FSDP) is not "
            "supported yet; choose a GPU with more memory or a shorter training.max_seq_length"
        )
    fitting = max(b for b in range(1, t.batch_size + 1) if _fits_at(shape, spec, gpu, b))
    return (
        f"needs {memory.total_gb:.0f} GB per GPU and {gpu.id} has {gpu.memory_gb:.0f} GB; "
        f"training.batch_size {fitting} (now {t.batch_size}) fits, or choose a GPU with more memory"
    )


def _fits_at(shape: ModelShape, spec: JobSpec, gpu: GpuType, batch_size: int) -> bool:
    training = spec.training.model_copy(update={"batch_size": batch_size})
    return memory_estimate(shape, spec.model_copy(update={"training": training})).fits(gpu)


# time ---------------------------------------------------------------------------------------

# Model FLOPs utilisation assumed for 4-bit QLoRA until the GPU check calibrates it.
DEFAULT_UTILISATION = (0.20, 0.40)
# Share of linear speed-up kept per extra data-parallel GPU (gradient all-reduce of the
# LoRA weights only: small).
DATA_PARALLEL_EFFICIENCY = 0.92
POD_START_S = (60.0, 240.0)  # schedule, image pull (cached or not), container start
DOWNLOAD_BYTES_PER_S = (400e6, 100e6)  # hub download to a pod, fast and slow
LOAD_BYTES_PER_S = (1.5e9, 0.5e9)  # read + quantise to 4-bit while loading
VOLUME_LOAD_BYTES_PER_S = (0.5e9, 0.2e9)  # network volumes read slower than local disk


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    def scale(self, factor: float) -> Range:
        return Range(self.low * factor, self.high * factor)

    def __add__(self, other: Range) -> Range:
        return Range(self.low + other.low, self.high + other.high)


def step_seconds(
    shape: ModelShape,
    tokens_per_step: float,
    gpu: GpuType,
    gpu_count: int = 1,
    utilisation: tuple[float, float] = DEFAULT_UTILISATION,
) -> Range:
    """(fast, slow) seconds per optimizer step."""
    flops = 6.0 * shape.parameters * tokens_per_step
    efficiency = DATA_PARALLEL_EFFICIENCY if gpu_count > 1 else 1.0
    per_s = gpu.bf16_tflops * 1e12 * gpu_count * efficiency
    return Range(flops / (per_s * max(utilisation)), flops / (per_s * min(utilisation)))


def startup_seconds(shape: ModelShape, *, network_volume: bool) -> Range:
    """(fast, slow) seconds from rental to the first step of an attempt."""
    size = shape.parameters * 2
    if network_volume:  # the hub cache on the volume: no download after the first attempt
        load = Range(size / VOLUME_LOAD_BYTES_PER_S[0], size / VOLUME_LOAD_BYTES_PER_S[1])
        return Range(*POD_START_S) + load
    download = Range(size / DOWNLOAD_BYTES_PER_S[0], size / DOWNLOAD_BYTES_PER_S[1])
    load = Range(size / LOAD_BYTES_PER_S[0], size / LOAD_BYTES_PER_S[1])
    return Range(*POD_START_S) + download + load


def tokens_per_step(
    spec: JobSpec, train_examples: int, train_tokens: int | None = None, train_sequences: int | None = None
) -> float:
    """Tokens an optimizer step processes. `train_examples` counts assistant targets (a step
    is batch x accumulation of them, brightrun.steps); with the prepared data's tokens known,
    their share per target plus the prefixes that sequences straddling two micro-batches
    repeat (`train_sequences` given), else every target at max_seq_length (the upper bound)."""
    t = spec.training
    if not (train_tokens and train_examples):
        return t.max_seq_length * t.batch_size * t.gradient_accumulation_steps
    micro = tokens_per_micro_batch(train_examples, train_sequences, train_tokens, t.batch_size)
    return min(micro, t.max_seq_length * t.batch_size) * t.gradient_accumulation_steps


def estimated_total_steps(spec: JobSpec, train_examples: int) -> int:
    """Optimizer steps the trainer will run (the trainer's own formula, brightrun.steps).
    `train_examples` counts trained examples: the prepared set's assistant targets
    (brightrun.prepared.step_examples), not its packed sequences."""
    t = spec.training
    return _total_steps(
        train_examples,
        batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        epochs=t.epochs,
        max_steps=t.max_steps,
    )


# cost ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostEstimate:
    """One offer (GPU type, spot or on-demand) priced for the whole job, pessimistic end."""

    gpu_type: str
    spot: bool
    hourly_usd: float
    hours: float
    usd: float

    def describe(self) -> str:
        kind = "spot" if self.spot else "on-demand"
        return f"~${self.usd:.2f} ({self.hours:.2f} h of {kind} {self.gpu_type} at ${self.hourly_usd:.3f}/h)"


@dataclass(frozen=True)
class GpuEstimate:
    """One GPU type for one job: does it fit, how long, what it costs (spot and on-demand)."""

    gpu_type: str
    gpu: GpuType | None
    fit_problem: str | None
    step_seconds: Range | None
    hours: Range | None  # on-demand: no interruption
    spot_hours: Range | None  # the slow end allows one interruption (a restart and lost steps)
    spot_hourly_usd: float | None  # for all the pod's GPUs
    on_demand_hourly_usd: float | None

    @property
    def fits(self) -> bool:
        return self.fit_problem is None

    def usd(self, spot: bool) -> Range | None:
        hours, hourly = (
            (self.spot_hours, self.spot_hourly_usd) if spot else (self.hours, self.on_demand_hourly_usd)
        )
        return hours.scale(hourly) if hours is not None and hourly is not None else None


@dataclass(frozen=True)
class JobEstimate:
    base_model: str
    parameters: int
    total_steps: int
    tokens_per_step: float
    gpu_count: int
    memory: MemoryEstimate
    startup_seconds: Range
    gpus: list[GpuEstimate]

    def for_cap(self, policy: ProvisioningPolicy) -> CostEstimate:
        """The first offer the provisioner would try that fits and has a price, at the slow,
        expensive end: what `check_estimate` holds against the job's caps."""
        rows = {g.gpu_type: g for g in self.gpus}
        for offer in capacity_plan(policy, 0):
            row = rows.get(offer.gpu_type)
            if row is None or not row.fits:
                continue
            usd = row.usd(offer.spot)
            hours = row.spot_hours if offer.spot else row.hours
            hourly = row.spot_hourly_usd if offer.spot else row.on_demand_hourly_usd
            if usd is None or hours is None or hourly is None:
                continue
            return CostEstimate(offer.gpu_type, offer.spot, hourly, hours.high, round(usd.high, 4))
        check_fit(self, policy)
        raise BrightrunError(f"no price known for any of {policy.gpu_types}; check the GPU type names")


def estimate_job(
    spec: JobSpec,
    train_examples: int,
    prices: Mapping[str, tuple[float | None, float | None]],
    shape: ModelShape,
    *,
    train_tokens: int | None = None,
    gpu_types: Sequence[str] | None = None,
    utilisation: tuple[float, float] = DEFAULT_UTILISATION,
    train_sequences: int | None = None,
) -> JobEstimate:
    """Time, cost and fit of `spec` on each GPU type (the policy's, unless `gpu_types`).

    `prices` maps RunPod GPU type -> (spot minimum bid, on-demand) in USD/h per GPU, as
    `tasks.provision.runpod_prices` returns them; a missing price leaves that cost empty.
    """
    policy = spec.provisioning
    steps = estimated_total_steps(spec, train_examples)
    per_step_tokens = tokens_per_step(spec, train_examples, train_tokens, train_sequences)
    memory = memory_estimate(shape, spec)
    startup = startup_seconds(shape, network_volume=bool(policy.network_volume_id))
    rows: list[GpuEstimate] = []
    for name in gpu_types or policy.gpu_types:
        gpu = gpu_type(name)
        measured = policy.seconds_per_step.get(name)
        if gpu is None and measured is None:
            rows.append(GpuEstimate(name, None, None, None, None, None, None, None))
            continue
        problem = fit_problem(shape, spec, gpu) if gpu is not None else None
        if measured is not None:
            per_step = Range(measured, measured)
        else:
            assert gpu is not None
            per_step = step_seconds(shape, per_step_tokens, gpu, policy.gpu_count, utilisation)
        hours = (per_step.scale(steps) + startup).scale(1 / 3600)
        # One interruption on the slow end: another start-up and half a checkpoint interval redone.
        redo = per_step.high * spec.checkpoint.every_steps / 2 + startup.high
        spot_hours = Range(hours.low, hours.high + redo / 3600)
        spot_bid, on_demand = prices.get(name, (None, None))
        spot_price = policy.max_bid_per_gpu or spot_bid
        rows.append(
            GpuEstimate(
                gpu_type=name,
                gpu=gpu,
                fit_problem=problem,
                step_seconds=per_step,
                hours=hours,
                spot_hours=spot_hours,
                spot_hourly_usd=spot_price * policy.gpu_count if spot_price is not None else None,
                on_demand_hourly_usd=on_demand * policy.gpu_count if on_demand is not None else None,
            )
        )
    return JobEstimate(
        base_model=spec.base_model,
        parameters=shape.parameters,
        total_steps=steps,
        tokens_per_step=per_step_tokens,
        gpu_count=policy.gpu_count,
        memory=memory,
        startup_seconds=startup,
        gpus=rows,
    )


def check_fit(estimate: JobEstimate, policy: ProvisioningPolicy) -> None:
    """Refuse, before renting, a job that fits none of the GPU types it may rent."""
    rows = [g for g in estimate.gpus if g.gpu_type in policy.gpu_types]
    if rows and not any(g.fits for g in rows):
        reasons = "; ".join(f"{g.gpu_type}: {g.fit_problem}" for g in rows)
        raise InputError(f"the job fits none of provisioning.gpu_types: {reasons}")


def check_estimate(estimate: CostEstimate, policy: ProvisioningPolicy) -> None:
    """Refuse to launch a job whose estimate already exceeds the cap."""
    if estimate.usd > policy.max_cost_usd:
        raise InputError(
            f"estimated cost {estimate.describe()} exceeds provisioning.max_cost_usd="
            f"{policy.max_cost_usd}; raise the cap, lower training steps, or choose cheaper GPU types"
        )
    if estimate.hours > policy.max_duration_hours:
        raise InputError(
            f"estimated duration {estimate.hours:.1f} h exceeds provisioning.max_duration_hours="
            f"{policy.max_duration_hours}"
        )


def cap_estimate(
    spec: JobSpec,
    train_examples: int,
    prices: Mapping[str, tuple[float | None, float | None]],
    *,
    train_tokens: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    train_sequences: int | None = None,
) -> CostEstimate:
    """What the flow records and holds against the caps before renting: sized by the model
    when its size is known (the hub table or its config.json), refusing a job that fits none
    of its GPU types; for a model of unknown size, the older model-blind estimate."""
    try:
        shape = model_shape(spec.base_model, model_config)
    except InputError:
        return model_blind_estimate(spec.provisioning, estimated_total_steps(spec, train_examples), prices)
    estimate = estimate_job(
        spec, train_examples, prices, shape, train_tokens=train_tokens, train_sequences=train_sequences
    )
    check_fit(estimate, spec.provisioning)
    return estimate.for_cap(spec.provisioning)


# For a model of unknown size (no config.json, not in the table): rough 8B seconds per step.
EIGHT_B_SECONDS_PER_STEP: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 6.0,
    "NVIDIA A100 80GB PCIe": 11.0,
    "NVIDIA L40S": 13.0,
    "NVIDIA RTX A6000": 20.0,
    "NVIDIA A40": 22.0,
}
FALLBACK_SECONDS_PER_STEP = 25.0
STARTUP_SECONDS_NO_VOLUME = 600.0
STARTUP_SECONDS_WITH_VOLUME = 120.0


def model_blind_estimate(
    policy: ProvisioningPolicy,
    total_steps: int,
    prices: Mapping[str, tuple[float | None, float | None]],
) -> CostEstimate:
    """The model-blind estimate (8B seconds per step unless measured), for a model whose size is
    unknown (`cap_estimate` falls back to it); a known model goes through `estimate_job`."""
    for offer in capacity_plan(policy, 0):
        spot_bid, on_demand = prices.get(offer.gpu_type, (None, None))
        per_gpu = (policy.max_bid_per_gpu or spot_bid) if offer.spot else on_demand
        if per_gpu is None:
            continue
        per_step = policy.seconds_per_step.get(
            offer.gpu_type, EIGHT_B_SECONDS_PER_STEP.get(offer.gpu_type, FALLBACK_SECONDS_PER_STEP)
        )
        startup = STARTUP_SECONDS_WITH_VOLUME if policy.network_volume_id else STARTUP_SECONDS_NO_VOLUME
        hours = (total_steps * per_step + startup) / 3600
        hourly = per_gpu * policy.gpu_count
        return CostEstimate(offer.gpu_type, offer.spot, hourly, hours, round(hours * hourly, 4))
    raise BrightrunError(f"no price known for any of {policy.gpu_types}; check the GPU type names")
