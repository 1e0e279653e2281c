"""One attempt of one training job: `TrainingRun.setup()` builds, `TrainingRun.train()` runs.

Modelled on torchtune's `recipes/lora_finetune_single_device.py`: `setup()` loads the
data, tokenizer and model (trainer/model.py), the optimizer, scheduler and batch stream,
and resumes from the newest checkpoint that verifies; `train()` runs the loop, then
evaluates and uploads. The loop is our own (not TRL's `SFTTrainer`): exact resume needs
control of every piece of state, and the TRL + bitsandbytes resume path changes the
adapter's dtype (DESIGN.md §4; see `trainer.model.build_training_model`). The process
around it (arguments, spec, reporter, failure marker) is trainer/main.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from brightrun import layout
from brightrun.errors import BrightrunError
from brightrun.protocol import EvalReport, MetricRecord, TrainerPhase, TrainerResult
from brightrun.spec import JobSpec, warmup_steps
from brightrun.storage import Storage
from trainer import distributed
from trainer.card import model_card
from trainer.distributed import World
from trainer.faults import FAULTS
from trainer.heartbeat import Reporter
from trainer.init_adapter import start_from_init_adapter
from trainer.model import build_training_model, load_tokenizer
from trainer.plan import check_plan, report_plan
from trainer.prepared_data import PreparedData, setup_data
from trainer.throughput import model_flops_per_token, peak_flops

log = logging.getLogger("trainer")

# Seconds a checkpoint is assumed to take before one has been timed (SIGTERM budget).
FIRST_CHECKPOINT_ESTIMATE_S = 2.0
CANCEL_POLL_S = 5.0


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


# setup ---------------------------------------------------------------------------------------


def job_workdir(job_id: str, storage_url: str) -> Path:
    """The job's scratch directory: the same path for every attempt of the job on this
    machine (the storage URL in it keeps two stores' same-named jobs apart)."""
    base = os.environ.get("BRIGHTRUN_WORK_DIR") or tempfile.gettempdir()
    where = hashlib.sha256(storage_url.encode()).hexdigest()[:10]
    return Path(base) / f"brightrun-{job_id}-{where}"


def _setup_workdir(spec: JobSpec, storage: Storage, world: World) -> Path:
    work = job_workdir(spec.job_id, storage.url)
    if world.distributed:  # ranks on one machine must not download into the same files
        work = work / f"rank-{world.rank}"
    work.mkdir(parents=True, exist_ok=True)
    return work


def remove_workdir(spec: JobSpec, storage: Storage, world: World) -> None:
    work = job_workdir(spec.job_id, storage.url)
    shutil.rmtree(work / f"rank-{world.rank}" if world.distributed else work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.rmdir()  # the last rank out removes the job's directory


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
        num_warmup_steps=warmup_steps(spec.training, total_steps),
        num_training_steps=total_steps,
    )


# the run -----------------------------------------------------------------------------------


class TrainingRun:
    """One attempt of one job: `setup()` builds everything and resumes; `train()` trains,
    evaluates and uploads."""

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

    def setup(self, previous_step: int | None) -> None:
        """Data, tokenizer, model, optimizer, batch stream, scheduler; then the resume.
        `previous_step`: the last step an earlier attempt reported (for the steps lost)."""
        from trainer.checkpoints import TrainerState
        from trainer.data import plan_steps

        spec, t = self.spec, self.spec.training
        self.reporter.phase(TrainerPhase.loading_data)
        self.data = self._load_data()
        log.info("dataset: %d train, %d validation examples", len(self.data.train), len(self.data.validation))
        self.reporter.phase(TrainerPhase.loading_model)
        self.device = distributed.device(self.world)
        self.tokenizer = load_tokenizer(spec.base_model, spec.base_model_revision)
        self.model = build_training_model(spec, self.device)
        if spec.init_adapter is not None:  # before any checkpoint, which replaces it
            start_from_init_adapter(self.storage, spec, self.work / "init_adapter", self.model)
        self.optimizer = _setup_optimizer(spec, self.model, self.device)
        self.stream = self._batch_stream()
        self.total_steps, self.total_micro = plan_steps(
            self.stream.batches_per_epoch, t.epochs, t.max_steps, t.gradient_accumulation_steps
        )
        report_plan(self.stream, t, self.total_steps, self.reporter if self.world.is_main else None)
        self.scheduler = _setup_scheduler(spec, self.optimizer, self.total_steps)
        self.pad_id = self.tokenizer.pad_token_id
        self.eval_batch = spec.evaluation.batch_size or t.batch_size

        resumed = self._resume(previous_step)
        # A fresh run measures the baseline loss first: the final loss is compared with it.
        self.needs_baseline = resumed is None
        self.state = resumed or TrainerState(
            step=0,
            total_steps=self.total_steps,
            epoch=0.0,
            micro_batches_done=0,
            data_epoch=0,
            data_batch_index=0,
            sampler_seed=t.seed,
            world_size=self.world.size,
            micro_batches_per_epoch=self.stream.batches_per_epoch,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.flops_per_token = model_flops_per_token(self.model) if self.device.type == "cuda" else None
        self.peak_flops = peak_flops()

    # what the objective decides (trainer/preference_run.py overrides these for DPO and KTO)
    def _load_data(self) -> PreparedData:
        return setup_data(self.storage, self.spec, self.work)

    def _batch_stream(self) -> Any:
        from trainer.data import TargetStream

        t = self.spec.training
        return TargetStream(self.data.train, t.batch_size, t.seed, group_by_length=t.group_by_length)

    def _plan_step(self, first: int, last: int) -> Any:
        from trainer.steps import SftStep

        return SftStep.build(self.stream, range(first, last), self.pad_id, self.spec.training.packing)

    def train(self) -> bool:
        """True when the job finished; False when it stopped early (SIGTERM or cancel)."""
        state = self.state
        if self.needs_baseline:
            self._evaluate_loss(state)
        self.reporter.phase(
            TrainerPhase.training,
            step=state.step,
            total_steps=self.total_steps,
            epoch=state.epoch,
            last_checkpoint_step=self.last_checkpoint_step,
        )
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
            FAULTS.pace_step()
            FAULTS.signal("kill_after_step", state.step)
            FAULTS.signal("sigterm_at_step", state.step)
            (due,) = distributed.agree(self.world, self.world.is_main and self._checkpoint_due(state))
            if self.signals.term_at is None and due:
                self._checkpoint(state)
            every = self.spec.evaluation.every_steps
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
        check_plan(state, self.stream, self.total_steps)
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
        check_plan(state, self.stream, self.total_steps)
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

        t = self.spec.training
        started = time.perf_counter()
        first = state.micro_batches_done
        last = min(first + t.gradient_accumulation_steps, self.total_micro)
        # Every rank builds the whole step's batches (cheap lists) to know its normaliser;
        # it runs forward and backward on its own share only.
        step = self._plan_step(first, last)
        grads, losses = [], []
        for m in self.world.micro_batches(first, last):
            distributed.seed_micro_batch(t.seed, m)
            loss = step.loss(self.model, m, self.device)
            if FAULTS.requested("nan_loss_at_step", state.step + 1):
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

        tokens, trained = step.tokens, step.trained_tokens
        state.step += 1
        state.micro_batches_done = last
        pos = self.stream.position(last)
        state.data_epoch, state.data_batch_index = pos.epoch, pos.batch_index
        state.epoch = last / self.stream.batches_per_epoch
        state.tokens_processed += tokens
        state.trained_tokens += trained
        state.padding_tokens += step.padding_tokens
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
                **step.metrics(),
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

    def _final_report(self) -> EvalReport:
        from trainer.evaluate import build_report, sample_replies, validation_loss

        spec = self.spec
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
        return build_report(loss, tokens, samples)

    def _finish(self, state: Any) -> None:
        from trainer import checkpoints

        spec = self.spec
        self.reporter.phase(TrainerPhase.evaluating)
        report = self._final_report()
        loss = report.eval_loss
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
