"""The trainer process: `python -m trainer --spec URI`.

A linear `main()` over small `_setup_*` builders, then one training loop of our own
(not TRL's `SFTTrainer`): exact resume needs control of every piece of state, and the
TRL + bitsandbytes resume path changes the adapter's dtype (DESIGN.md §4; see
`_setup_model`). Everything the orchestrator learns comes through storage.

Attempt number: `BRIGHTRUN_ATTEMPT` when the orchestrator sets it, else one more than
the highest attempt an earlier process left in storage (status.json, events, metrics).
Local scratch space: `<BRIGHTRUN_WORK_DIR or the temp dir>/brightrun-<job_id>`, one fixed
path per job so an attempt that was SIGKILLed leaves nothing the next one does not reuse;
removed on every exit the process lives to see.

Several GPUs: under torchrun (`python -m torch.distributed.run --standalone
--nproc-per-node=N -m trainer --spec URI`) every rank trains its share of each step
(trainer/distributed.py); only rank 0 writes to storage (status, metrics, events,
checkpoints, adapter, result); every rank reads the checkpoint it resumes from.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from brightrun import layout, prepared
from brightrun.errors import BrightrunError
from brightrun.protocol import MetricRecord, TrainerPhase, TrainerResult
from brightrun.spec import JobSpec, QuantizationSettings, parse_spec
from brightrun.storage import Storage, open_storage, split_uri
from trainer import distributed
from trainer.distributed import World
from trainer.heartbeat import QuietReporter, Reporter, last_reported_step, previous_attempts

log = logging.getLogger("trainer")

# Seconds a checkpoint is assumed to take before one has been timed (SIGTERM budget).
FIRST_CHECKPOINT_ESTIMATE_S = 2.0
CANCEL_POLL_S = 5.0
# Dense bf16 tensor-core peak, for MFU (FLOPs per second). Unknown GPUs report no MFU.
# Matched in order against the CUDA device name: the specific names first.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A40": 150e12,
    "A6000": 155e12,
    "4090": 165e12,
    "3090": 71e12,
}


class TrainingDiverged(BrightrunError):
    """The loss or gradient norm became NaN or infinite."""


@dataclass
class Signals:
    """SIGTERM only sets a flag: the current step finishes, then we checkpoint if time allows."""

    term_at: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.term_at is None:
            self.term_at = time.monotonic()
            log.warning("SIGTERM received: finishing the current step")


@dataclass
class PreparedData:
    directory: Path
    meta: prepared.PreparedMeta
    train: list[Any]
    validation: list[Any]
    prompts: list[prepared.HeldOutPrompt]


# setup ---------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="URI of the job's spec.json (a path or s3://...)")
    return parser.parse_args(argv)


def _setup_logging() -> None:
    # Library loggers (transformers, peft) and ours all go to stderr: the pod log.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.captureWarnings(True)
    # Known, harmless noise from the libraries on every run (deprecation notices we cannot act on).
    for pattern in (
        r".*gradient_checkpointing.* is deprecated",
        r".*is_gradient_checkpointing.* is deprecated",
        r".*an autograd kernel was not registered.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - the train extra is missing; main() reports it
        pass


def _setup_storage(spec_uri: str) -> tuple[Storage, str]:
    parent, name = split_uri(spec_uri)
    endpoint = os.environ.get("BRIGHTRUN_S3_ENDPOINT_URL") or None
    return open_storage(parent, endpoint_url=endpoint), name


def _setup_attempt(storage: Storage) -> int:
    explicit = os.environ.get("BRIGHTRUN_ATTEMPT")
    if explicit and explicit.isdigit() and int(explicit) >= 1:
        return int(explicit)
    return previous_attempts(storage) + 1


def job_workdir(job_id: str, storage_url: str) -> Path:
    """The job's scratch directory: the same path for every attempt of the job on this
    machine (the storage URL in it keeps two stores' same-named jobs apart)."""
    import hashlib

    base = os.environ.get("BRIGHTRUN_WORK_DIR") or tempfile.gettempdir()
    where = hashlib.sha256(storage_url.encode()).hexdigest()[:10]
    return Path(base) / f"brightrun-{job_id}-{where}"


def _setup_workdir(spec: JobSpec, storage: Storage, world: World) -> Path:
    work = job_workdir(spec.job_id, storage.url)
    if world.distributed:  # ranks on one machine must not download into the same files
        work = work / f"rank-{world.rank}"
    work.mkdir(parents=True, exist_ok=True)
    return work


def _remove_workdir(spec: JobSpec, storage: Storage, world: World) -> None:
    work = job_workdir(spec.job_id, storage.url)
    shutil.rmtree(work / f"rank-{world.rank}" if world.distributed else work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.rmdir()  # the last rank out removes the job's directory


def _setup_data(storage: Storage, spec: JobSpec, work: Path) -> PreparedData:
    from trainer.data import load_examples

    directory = work / "data"
    prefix = spec.dataset_prefix.rstrip("/")
    meta_bytes = storage.get_bytes(f"{prefix}/{prepared.META}")
    meta = prepared.PreparedMeta.model_validate_json(meta_bytes)
    if meta.format != prepared.FORMAT:
        raise BrightrunError(
            f"{prefix}/{prepared.META}: format {meta.format!r}, expected {prepared.FORMAT!r}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / prepared.META).write_bytes(meta_bytes)
    for name in (prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS):
        key = f"{prefix}/{name}"
        if name == prepared.PROMPTS and not storage.exists(key):
            continue
        storage.get_file(key, directory / name, expected_sha256=meta.files_sha256.get(name))
    max_len = spec.training.max_seq_length
    return PreparedData(
        directory=directory,
        meta=meta,
        train=load_examples(directory / prepared.TRAIN, max_len),
        validation=load_examples(directory / prepared.VALIDATION, max_len),
        prompts=list(prepared.iter_prompts(directory / prepared.PROMPTS)),
    )


def _setup_tokenizer(spec: JobSpec) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model, revision=spec.base_model_revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def four_bit_load_kwargs(q: QuantizationSettings, device: Any) -> dict[str, Any]:
    """`from_pretrained` arguments of a 4-bit NF4 base, the same for training and inference
    (an adapter only reproduces its training numbers on the base quantized the same way)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute_dtype = getattr(torch, q.compute_dtype)
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        ),
        "dtype": compute_dtype,
        "device_map": {"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
    }


def _setup_model(spec: JobSpec, device: Any) -> Any:
    """Base model (4-bit NF4 or plain), LoRA on top, trainable weights pinned to adapter_dtype.

    Why the pin: TRL's SFTTrainer casts a quantized model's LoRA weights to bf16 when it
    starts, but `Trainer._load_from_checkpoint` reloads them with PEFT's `load_adapter`,
    whose default `autocast_adapter_dtype=True` makes them fp32. A resumed run then takes
    its optimizer steps in fp32 where the uninterrupted run rounded every update to bf16,
    and the two drift apart. Here the dtype is set once, explicitly, after wrapping and
    again after loading a checkpoint (checkpoints.load_local).
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, set_seed

    q = spec.quantization
    compute_dtype = getattr(torch, q.compute_dtype)
    kwargs: dict[str, Any] = {
        "revision": spec.base_model_revision,
        "attn_implementation": attention_implementation(device),
    }
    if q.load_in_4bit:
        kwargs.update(four_bit_load_kwargs(q, device))
    else:
        # Plain LoRA: half precision on a GPU, fp32 on the CPU (bf16 matmuls are slow there).
        kwargs["dtype"] = compute_dtype if device.type == "cuda" else torch.float32
    set_seed(spec.training.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
    if not q.load_in_4bit:
        model.to(device)
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if q.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.training.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    elif spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    lora = spec.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if q.load_in_4bit:
        keep_cpu_weight_layout(model)
    pin_adapter_dtype(model, getattr(torch, q.adapter_dtype))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s loaded on %s: %d trainable parameters", spec.base_model, device, trainable)
    return model


def attention_implementation(device: Any) -> str:
    """The attention kernel, one that respects packed boundaries (position ids restarting at
    0, no attention mask): flash-attention's varlen kernel where it is installed on a GPU,
    else PyTorch SDPA with the block-diagonal causal mask transformers builds from the
    position ids."""
    import importlib.util

    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def keep_cpu_weight_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights on the CPU during evaluation.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode without grad converts its
    weight, once and for good, to a CPU-packed layout whose matmul kernels round
    differently. A run that evaluated before step N (the baseline, or an `every_steps`
    evaluation) then trains on other numerics than one resumed at step N, and the adapters
    drift apart (measured: 2e-2 on 1e-1 weights after 7 steps). One layout for the whole run.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def pin_adapter_dtype(model: Any, dtype: Any) -> None:
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _setup_optimizer(spec: JobSpec, model: Any, device: Any) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    t = spec.training
    name = t.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if device.type == "cuda" else "adamw_torch"
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def _setup_scheduler(spec: JobSpec, optimizer: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    return get_scheduler(
        spec.training.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=min(spec.training.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )


def _model_flops_per_token(model: Any) -> float:
    """6 x parameters (forward + backward), counting 4-bit packed weights at their real size."""
    total = 0
    for param in model.parameters():
        total += param.numel() * (2 if hasattr(param, "quant_state") else 1)
    return 6.0 * total


def _peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# the run -----------------------------------------------------------------------------------


class Run:
    """One attempt of one job: resume, train, evaluate, upload."""

    def __init__(
        self,
        spec: JobSpec,
        storage: Storage,
        reporter: Reporter,
        signals: Signals,
        world: World | None = None,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.reporter = reporter
        self.signals = signals
        self.world = world or World()
        self.work = _setup_workdir(spec, storage, self.world)
        self.last_checkpoint_step: int | None = None
        self.last_checkpoint_seconds: float | None = None
        self.last_checkpoint_time = time.monotonic()
        self.checkpoint_seconds_total = 0.0
        self.next_cancel_check = 0.0

    def execute(self, previous_step: int | None) -> bool:
        """True when the job finished; False when it stopped early (SIGTERM or cancel)."""
        from trainer import checkpoints
        from trainer.checkpoints import TrainerState
        from trainer.data import BatchStream, plan_steps

        spec, t = self.spec, self.spec.training
        self.reporter.phase(TrainerPhase.loading_data)
        data = _setup_data(self.storage, spec, self.work)
        log.info("dataset: %d train, %d validation examples", len(data.train), len(data.validation))
        self.reporter.phase(TrainerPhase.loading_model)
        self.device = distributed.device(self.world)
        self.tokenizer = _setup_tokenizer(spec)
        self.model = _setup_model(spec, self.device)
        self.optimizer = _setup_optimizer(spec, self.model, self.device)
        self.stream = BatchStream(data.train, t.batch_size, t.seed, group_by_length=t.group_by_length)
        self.total_steps, self.total_micro = plan_steps(
            self.stream.batches_per_epoch, t.epochs, t.max_steps, t.gradient_accumulation_steps
        )
        self.scheduler = _setup_scheduler(spec, self.optimizer, self.total_steps)
        self.data = data
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = pad_id
        self.eval_batch = spec.evaluation.batch_size or t.batch_size

        state = self._resume(previous_step)
        if state is None:
            state = TrainerState(
                step=0,
                total_steps=self.total_steps,
                epoch=0.0,
                micro_batches_done=0,
                data_epoch=0,
                data_batch_index=0,
                sampler_seed=t.seed,
                world_size=self.world.size,
            )
            self._evaluate_loss(state)  # the baseline the final loss is compared with
        self.state = state
        self.reporter.phase(
            TrainerPhase.training,
            step=state.step,
            total_steps=self.total_steps,
            epoch=state.epoch,
            last_checkpoint_step=self.last_checkpoint_step,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.flops_per_token = _model_flops_per_token(self.model) if self.device.type == "cuda" else None
        self.peak_flops = _peak_flops()
        self.model.train()
        while state.step < self.total_steps:
            # Every rank takes the same branch: a SIGTERM or a cancel seen by one stops all.
            stopping, cancelled = distributed.agree(
                self.world, self.signals.term_at is not None, self.world.is_main and self._cancelled()
            )
            if stopping:
                return self._interrupted(state)
            if cancelled:
                self.reporter.event("cancelled", step=state.step)
                self.reporter.flush_metrics()
                self.reporter.phase(TrainerPhase.interrupted)
                return False
            self._train_step(state)
            checkpoints.test_pacing("step")
            checkpoints.fault("kill_after_step", state.step)
            checkpoints.fault("sigterm_at_step", state.step)
            (due,) = distributed.agree(self.world, self.world.is_main and self._checkpoint_due(state))
            if self.signals.term_at is None and due:
                self._checkpoint(state)
            every = spec.evaluation.every_steps
            if every and state.step % every == 0 and state.step < self.total_steps:
                self._evaluate_loss(state)
        (stopping,) = distributed.agree(self.world, self.signals.term_at is not None)
        if stopping:
            return self._interrupted(state)
        if self.last_checkpoint_step != state.step:
            self._checkpoint(state)  # a crash in evaluation or upload then costs no training
        if self.world.is_main:  # the others' work ends with the last step
            self._finish(state)
        return True

    # resume --------------------------------------------------------------------------------
    def _resume(self, previous_step: int | None) -> Any:
        import torch

        from trainer import checkpoints

        if not self.world.is_main:
            return self._resume_follower()
        try:
            restorable = checkpoints.fetch_latest_valid(self.storage, self.work / "restore")
        except checkpoints.CheckpointUnreadable:
            # Storage is down, not the checkpoints: fail this attempt with nothing deleted, so
            # a later resume continues from them. The other ranks stop too.
            distributed.broadcast(self.world, checkpoints.UNREADABLE_STEP)
            raise
        distributed.broadcast(self.world, restorable.step if restorable else None)
        if restorable is None:
            gone = checkpoints.discard_after(self.storage, -1)
            if gone:
                log.info("discarded uncommitted checkpoint uploads %s", gone)
            return None
        for step, reason in restorable.rejected:
            self.reporter.event("checkpoint_rejected", step=step, reason=reason)
        if restorable.step < 0:
            # Every candidate is corrupt (not merely unreadable): start over, but keep them
            # under rejected-checkpoints/ for whoever investigates; never delete them.
            tag = f"attempt-{self.reporter.attempt}"
            moved = checkpoints.quarantine(self.storage, restorable.rejected, self.work / "restore", tag)
            log.warning(
                "no committed checkpoint verifies: moved them under %s/%s/; starting from step 0",
                checkpoints.QUARANTINE_DIR,
                tag,
            )
            self.reporter.event(
                "checkpoints_quarantined", steps=[s for s, _ in restorable.rejected], keys=len(moved)
            )
            checkpoints.discard_after(self.storage, -1)  # uploads that never committed
            return None
        assert restorable.files is not None  # a verified step is always read
        state = checkpoints.apply_local(
            restorable.files,
            self.model,
            self.optimizer,
            self.scheduler,
            getattr(torch, self.spec.quantization.adapter_dtype),
        )
        self._check_world_size(state)
        checkpoints.discard_after(self.storage, restorable.step)
        if checkpoints.read_latest(self.storage) != restorable.step:
            self.storage.put_bytes(layout.LATEST, f"{restorable.step}\n".encode())  # fell back
        self.last_checkpoint_step = state.step
        lost = max(0, (previous_step or 0) - state.step)
        self.reporter.event(
            "resumed",
            from_step=state.step,
            lost_steps=lost,
            epoch=state.epoch,
            data_epoch=state.data_epoch,
            data_batch_index=state.data_batch_index,
        )
        log.info("resumed from checkpoint %d (%d steps lost)", state.step, lost)
        shutil.rmtree(restorable.directory, ignore_errors=True)
        return state

    def _resume_follower(self) -> Any:
        """Ranks above 0: load the checkpoint rank 0 chose (a step below 0: none verified)."""
        import torch

        from trainer import checkpoints

        step = distributed.broadcast(self.world, None)
        if step == checkpoints.UNREADABLE_STEP:
            raise checkpoints.CheckpointUnreadable("rank 0 could not read the checkpoints (see its log)")
        if step is None or step < 0:
            return None
        directory = checkpoints.download_verified(self.storage, step, self.work / "restore" / f"{step:08d}")
        state = checkpoints.load_local(
            directory,
            self.model,
            self.optimizer,
            self.scheduler,
            getattr(torch, self.spec.quantization.adapter_dtype),
        )
        shutil.rmtree(directory, ignore_errors=True)
        self.last_checkpoint_step = state.step
        return state

    def _check_world_size(self, state: Any) -> None:
        """A checkpoint from another world size resumes (the global batch, data order and
        dropout masks do not depend on it; only the order of float sums does): recorded."""
        if state.world_size != self.world.size:
            log.warning(
                "checkpoint %d was written by %d process(es); resuming with %d: same global batch and "
                "data order, sums added in another order (differences at float rounding)",
                state.step,
                state.world_size,
                self.world.size,
            )
            self.reporter.event(
                "world_size_changed", step=state.step, previous=state.world_size, current=self.world.size
            )
            state.world_size = self.world.size

    # one optimizer step -----------------------------------------------------------------
    def _train_step(self, state: Any) -> None:
        import torch

        from trainer import checkpoints
        from trainer.data import make_batch
        from trainer.evaluate import summed_loss, to_tensors

        t = self.spec.training
        started = time.perf_counter()
        first = state.micro_batches_done
        last = min(first + t.gradient_accumulation_steps, self.total_micro)
        # Every rank builds the whole step's batches (cheap lists) to know its trained tokens;
        # it runs forward and backward on its own share only.
        batches = {
            m: make_batch(self.stream.micro_batch(m), self.pad_id, packing=t.packing)
            for m in range(first, last)
        }
        trained = sum(b.trained_tokens for b in batches.values())
        grads, losses = [], []
        for m in self.world.micro_batches(first, last):
            distributed.seed_micro_batch(t.seed, m)
            # Normalised by the whole step's trained tokens: every token weighs the same,
            # whatever micro-batch (or rank) it falls in.
            loss = summed_loss(self.model, to_tensors(batches[m], self.device)) / max(trained, 1)
            if checkpoints.fault_requested("nan_loss_at_step", state.step + 1):
                loss = loss * float("nan")
            loss.backward()
            losses.append(float(loss.detach()))
            if self.world.distributed:
                grads.append(distributed.take_gradients(self.params))
        step_loss = distributed.sum_in_order(self.world, self.params, grads, losses, last - first)
        if not math.isfinite(step_loss):  # after the sum, so every rank raises together
            raise TrainingDiverged(
                f"loss is {step_loss} at step {state.step + 1}; "
                "lower training.learning_rate or check the data"
            )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {state.step + 1}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started

        tokens = sum(b.tokens for b in batches.values())
        state.step += 1
        state.micro_batches_done = last
        pos = self.stream.position(last)
        state.data_epoch, state.data_batch_index = pos.epoch, pos.batch_index
        state.epoch = last / self.stream.batches_per_epoch
        state.tokens_processed += tokens
        state.trained_tokens += trained
        state.padding_tokens += sum(b.padding_tokens for b in batches.values())
        state.last_loss = step_loss
        state.train_seconds += seconds
        tokens_per_s = tokens / seconds if seconds > 0 else None
        peak_mb = mfu = None
        if self.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
            if self.peak_flops and self.flops_per_token and tokens_per_s:
                # tokens_per_s counts every rank's tokens: the peak is every GPU's.
                mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.world.size)
        self.reporter.metric(
            MetricRecord(
                step=state.step,
                epoch=state.epoch,
                loss=step_loss,
                learning_rate=lr,
                grad_norm=grad_norm,
                tokens_processed=state.tokens_processed,
                trained_tokens=state.trained_tokens,
                padding_tokens=state.padding_tokens,
                tokens_per_s=tokens_per_s,
                peak_memory_mb=peak_mb,
                mfu=mfu,
                attempt=self.reporter.attempt,
            )
        )
        self.reporter.update(
            step=state.step,
            epoch=state.epoch,
            loss=step_loss,
            learning_rate=lr,
            grad_norm=grad_norm,
            tokens_per_s=tokens_per_s,
        )
        log.info(
            "step %d/%d loss %.4f lr %.2e grad_norm %.3f",
            state.step,
            self.total_steps,
            step_loss,
            lr,
            grad_norm,
        )

    # checkpoints ---------------------------------------------------------------------------
    def _checkpoint_due(self, state: Any) -> bool:
        c = self.spec.checkpoint
        return (
            state.step % c.every_steps == 0
            or time.monotonic() - self.last_checkpoint_time >= c.every_seconds
            or state.step == self.total_steps
        )

    def _checkpoint(self, state: Any) -> None:
        from trainer import checkpoints

        if not self.world.is_main:  # rank 0's weights are every rank's: it alone writes
            self.last_checkpoint_step = state.step
            return
        started = time.perf_counter()
        self.reporter.phase(TrainerPhase.checkpointing)
        local = self.work / "checkpoints" / f"{state.step:08d}"
        checkpoints.save_local(local, self.model, self.optimizer, self.scheduler, state)
        self.reporter.flush_metrics()
        manifest = checkpoints.commit(self.storage, local, state.step, self.spec.checkpoint.keep_last)
        shutil.rmtree(local, ignore_errors=True)
        seconds = time.perf_counter() - started
        self.last_checkpoint_step = state.step
        self.last_checkpoint_seconds = seconds
        self.last_checkpoint_time = time.monotonic()
        self.checkpoint_seconds_total += seconds
        self.reporter.event(
            "checkpoint_committed", step=state.step, seconds=round(seconds, 3), bytes=manifest.total_size
        )
        self.reporter.phase(TrainerPhase.training, last_checkpoint_step=state.step)

    def _interrupted(self, state: Any) -> bool:
        # Another rank may have seen the SIGTERM first: then this one's clock starts now.
        term_at = self.signals.term_at if self.signals.term_at is not None else time.monotonic()
        grace = self.spec.checkpoint.sigterm_grace_seconds
        elapsed = time.monotonic() - term_at
        estimate = self.last_checkpoint_seconds or FIRST_CHECKPOINT_ESTIMATE_S
        if self.last_checkpoint_step != state.step and elapsed + estimate <= grace:
            self._checkpoint(state)
        committed = self.last_checkpoint_step == state.step
        self.reporter.event(
            "interrupted",
            step=state.step,
            checkpoint_committed=committed,
            last_checkpoint_step=self.last_checkpoint_step,
        )
        self.reporter.flush_metrics()
        self.reporter.phase(TrainerPhase.interrupted, last_checkpoint_step=self.last_checkpoint_step)
        log.warning("interrupted at step %d (checkpoint committed: %s)", state.step, committed)
        return False

    def _cancelled(self) -> bool:
        now = time.monotonic()
        if now < self.next_cancel_check:
            return False
        self.next_cancel_check = now + CANCEL_POLL_S
        return self.storage.exists(layout.CANCEL)

    # evaluation and the end -------------------------------------------------------------------
    def _evaluate_loss(self, state: Any) -> float:
        from trainer.evaluate import validation_loss

        if not self.data.validation or not self.world.is_main:
            return float("nan")
        loss, _ = validation_loss(self.model, self.data.validation, self.eval_batch, self.pad_id, self.device)
        self.reporter.metric(
            MetricRecord(step=state.step, epoch=state.epoch, eval_loss=loss, attempt=self.reporter.attempt)
        )
        log.info("validation loss at step %d: %.4f", state.step, loss)
        return loss

    def _finish(self, state: Any) -> None:
        from trainer import checkpoints
        from trainer.evaluate import build_report, sample_replies, validation_loss

        spec = self.spec
        self.reporter.phase(TrainerPhase.evaluating)
        if self.data.validation:
            loss, tokens = validation_loss(
                self.model, self.data.validation, self.eval_batch, self.pad_id, self.device
            )
        else:
            loss, tokens = float("nan"), 0
        samples = sample_replies(
            self.model,
            self.tokenizer,
            self.data.prompts[: spec.evaluation.sample_generations],
            spec.evaluation.max_new_tokens,
            spec.training.max_seq_length,
            self.device,
        )
        report = build_report(loss, tokens, samples)
        self.reporter.metric(
            MetricRecord(step=state.step, epoch=state.epoch, eval_loss=loss, attempt=self.reporter.attempt)
        )
        self.reporter.flush_metrics()
        self.storage.put_bytes(layout.EVAL, report.model_dump_json(indent=2).encode())

        self.reporter.phase(TrainerPhase.uploading)
        adapter = self.work / "adapter"
        if adapter.exists():
            shutil.rmtree(adapter)
        self.model.save_pretrained(adapter, safe_serialization=True)
        self.tokenizer.save_pretrained(adapter)
        (adapter / "README.md").write_text(model_card(spec, self.data.meta, report, state))
        manifest = checkpoints.upload_with_manifest(
            self.storage, layout.ADAPTER_DIR, adapter, before_manifest=lambda: None
        )
        tokens_per_s = state.tokens_processed / state.train_seconds if state.train_seconds else None
        result = TrainerResult(
            job_id=spec.job_id,
            steps=state.step,
            epochs=state.epoch,
            train_loss=state.last_loss,
            eval_loss=loss if math.isfinite(loss) else None,
            perplexity=report.perplexity if math.isfinite(loss) else None,
            adapter_prefix=layout.ADAPTER_DIR,
            adapter_size_bytes=manifest.total_size,
            train_seconds=state.train_seconds,
            tokens_per_s=tokens_per_s,
            attempts=self.reporter.attempt,
        )
        self.storage.put_bytes(layout.RESULT, result.model_dump_json(indent=2).encode())
        self.reporter.phase(TrainerPhase.completed, step=state.step)
        log.info("job %s completed: eval loss %.4f", spec.job_id, loss)


def model_card(spec: JobSpec, meta: prepared.PreparedMeta, report: Any, state: Any) -> str:
    t, lora, q = spec.training, spec.lora, spec.quantization
    samples = "\n".join(f"- **prompt:** {s['prompt']}\n  **reply:** {s['generated']}" for s in report.samples)
    revision = f" (revision {spec.base_model_revision})" if spec.base_model_revision else ""
    if q.load_in_4bit:
        quant = f"4-bit {q.quant_type}{' double-quant' if q.double_quant else ''}, compute {q.compute_dtype}"
    else:
        quant = "none (plain LoRA)"
    lines = [
        "---",
        f"base_model: {spec.base_model}",
        "library_name: peft",
        "tags: [lora, brightrun]",
        "---",
        "",
        f"# {spec.job_name or spec.job_id}",
        "",
        f"LoRA adapter for `{spec.base_model}`{revision}, trained by BrightRun job `{spec.job_id}`.",
        "",
        "## Data",
        f"- source: `{meta.source_name}`, sha256 `{spec.dataset_sha256 or meta.source_sha256}`",
        f"- {meta.train_examples} training / {meta.validation_examples} validation examples, "
        f"tokenizer `{meta.tokenizer}`",
        "",
        "## Hyperparameters",
        f"- LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, bias={lora.bias}, "
        f"targets {', '.join(lora.target_modules)}",
        f"- quantization: {quant}; adapter dtype {q.adapter_dtype}",
        f"- learning rate {t.learning_rate} ({t.lr_scheduler}, {t.warmup_steps} warmup steps), "
        f"optimizer {t.optimizer}",
        f"- {state.step} steps ({state.epoch:.2f} epochs), batch {t.batch_size} x "
        f"{t.gradient_accumulation_steps} accumulation, max length {t.max_seq_length}, seed {t.seed}",
        f"- preset: {spec.preset.value if spec.preset else 'none'}",
        "",
        "## Evaluation",
        f"- validation loss {report.eval_loss:.4f}, perplexity {report.perplexity:.2f} "
        f"over {report.eval_tokens} tokens",
        "",
        samples,
        "",
    ]
    return "\n".join(lines)


def _spec_failure(storage: Storage, exc: Exception) -> int:
    """The spec itself is unreadable: still leave failure.json where the orchestrator looks."""
    from brightrun.protocol import TrainerFailure

    log.error("cannot read the job spec: %s", exc)
    failure = TrainerFailure(
        job_id=storage.url.rstrip("/").rsplit("/", 1)[-1],
        phase=TrainerPhase.starting,
        error=str(exc),
        error_type=type(exc).__name__,
    )
    with contextlib.suppress(Exception):
        storage.put_bytes(layout.FAILURE, failure.model_dump_json(indent=2).encode())
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signals = Signals()
    signals.install()  # first: a SIGTERM during start-up is honoured too
    _setup_logging()
    world = distributed.world_from_env()
    storage, spec_name = _setup_storage(args.spec)
    try:
        spec = parse_spec(storage.get_bytes(spec_name))
    except Exception as exc:
        return _spec_failure(storage, exc) if world.is_main else 2
    if storage.exists(layout.RESULT):
        result = TrainerResult.model_validate_json(storage.get_bytes(layout.RESULT))
        message = (
            f"job {spec.job_id} is already finished ({result.steps} steps, adapter at {layout.ADAPTER_DIR}/)"
        )
        log.info(message)
        if world.is_main:
            print(message)
        return 0
    attempt = _setup_attempt(storage)
    from brightrun.trainer_logs import ship_logs

    # Log lines reach the flow run's logs through storage (rank 0's; the pod log has them all).
    shipped_log = ship_logs(storage, attempt) if world.is_main else None
    previous_step = last_reported_step(storage)
    # Rank 0 speaks for all ranks; the others make the same calls and write nothing.
    reporter_class = Reporter if world.is_main else QuietReporter
    reporter = reporter_class(storage, spec.job_id, attempt, spec.heartbeat_seconds)
    if world.is_main and storage.exists(layout.FAILURE):
        log.warning("a failure marker of an earlier attempt exists; this attempt replaces it")
        storage.delete(layout.FAILURE)
    reporter.phase(TrainerPhase.starting)
    reporter.start()
    try:
        distributed.start(world)
        run = Run(spec, storage, reporter, signals, world)
        run.execute(previous_step)
    except Exception as exc:
        log.exception("job %s failed (rank %d of %d)", spec.job_id, world.rank, world.size)
        reporter.stop()
        try:
            reporter.flush_metrics()
        finally:
            reporter.failure(exc)
        return 1
    finally:
        reporter.stop()
        if shipped_log is not None:
            shipped_log.close()
        _remove_workdir(spec, storage, world)
        distributed.stop(world)
    return 0
