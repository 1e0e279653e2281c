"""Checkpoints in object storage with a commit point (DESIGN.md §4).

Save: every file is written to a local directory, uploaded under
`checkpoints/<step:08d>/`, then `MANIFEST.json` (sha256 and size of each file), then
`checkpoints/LATEST` naming the step. A checkpoint exists only once LATEST names it;
older ones are deleted only after the new LATEST is written.

Resume: the committed steps (LATEST and any older step with a manifest) are tried
newest first; a checkpoint that is corrupt (its manifest is missing or not a manifest, it
lacks a file, a file's size or sha256 differs, or a file is not plain tensor data) is
rejected and the previous one is tried.

A read error is not a bad checkpoint: a storage error other than "no such object" or
"sha256 mismatch" is retried with backoff (`ReadRetry`), and if it persists the resume
stops with `CheckpointUnreadable` (the attempt fails; every checkpoint stays as it was, so
a later resume continues from it). Only when every candidate is corrupt does a run start
from step 0, and even then the rejected checkpoints are moved under
`rejected-checkpoints/`, never deleted: they are evidence, and a wrong verdict must stay
recoverable.

Nothing read from storage may run code: the manifest sits in the same bucket as the files
it describes, so a matching sha256 proves integrity, not origin. Every `.pt` file is read
with `torch.load(weights_only=True)` (tensors and plain containers only), the adapter with
safetensors and the trainer state as JSON.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from brightrun import layout
from brightrun.manifest import build_manifest, encode
from brightrun.protocol import Manifest
from brightrun.storage import IntegrityError, ObjectNotFound, Storage, StorageError
from trainer.faults import FAULTS

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
REQUIRED_FILES = (ADAPTER_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, STATE_FILE)
_STEP_DIR = re.compile(r"^checkpoints/(\d{8})/")
_T = TypeVar("_T")


class TrainerState(BaseModel):
    """`trainer_state.json`: counters and the data position after `step`."""

    step: int
    total_steps: int
    epoch: float
    micro_batches_done: int
    data_epoch: int
    data_batch_index: int
    sampler_seed: int
    tokens_processed: int = 0
    trained_tokens: int = 0
    padding_tokens: int = 0
    last_loss: float | None = None
    train_seconds: float = 0.0
    world_size: int = 1  # processes that trained up to here (data parallel)
    # The plan the data position is in (brightrun.steps); None: written before it was kept.
    micro_batches_per_epoch: int | None = None


class CheckpointRejected(Exception):
    """A stored checkpoint is corrupt (failed verification); the reason names the file."""


class CheckpointUnreadable(Exception):
    """Storage would not answer while reading a checkpoint, even after retries. Says nothing
    about the checkpoint itself: the resume stops here instead of falling back or deleting."""


QUARANTINE_DIR = "rejected-checkpoints"
UNREADABLE_STEP = -2  # what rank 0 broadcasts when storage failed: every rank stops


@dataclass(frozen=True)
class ReadRetry:
    """How long a resume waits out a storage outage before failing the attempt:
    `attempts` tries per read, sleeping `first_delay_s`, then twice that, and so on."""

    attempts: int = 5
    first_delay_s: float = 1.0

    def delays(self) -> list[float]:
        return [self.first_delay_s * 2**i for i in range(max(0, self.attempts - 1))]


DEFAULT_READ_RETRY = ReadRetry()


def read_with_retry(what: str, read: Callable[[], _T], retry: ReadRetry = DEFAULT_READ_RETRY) -> _T:
    """`read()`, retrying storage errors with backoff. "No such object" and "sha256 mismatch"
    are answers, not outages: they pass through at once. Anything else that persists becomes
    `CheckpointUnreadable`, naming the object."""
    delays = retry.delays()
    for attempt in range(len(delays) + 1):
        try:
            FAULTS.storage_outage(what)
            return read()
        except (ObjectNotFound, IntegrityError):
            raise
        except StorageError as exc:
            if attempt == len(delays):
                raise CheckpointUnreadable(
                    f"{what}: storage error after {retry.attempts} tries ({exc}); no checkpoint was "
                    "rejected or deleted: resume the job once storage answers again"
                ) from exc
            log.warning("reading %s failed (%s); retrying in %.1f s", what, exc, delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


# local files ------------------------------------------------------------------


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The exact trainable parameters by name (their own dtype, no PEFT renaming)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def save_local(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    save_file(trainable_state(model), str(directory / ADAPTER_FILE))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
    torch.save(rng_state(), directory / RNG_FILE)
    (directory / STATE_FILE).write_text(state.model_dump_json(indent=2))


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint directory read back safely; nothing in it has touched the model yet."""

    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    state: TrainerState


def load_tensor_file(path: Path, located_as: str) -> Any:
    """`torch.load` restricted to tensors and plain containers. A file that needs anything
    else (a pickled object whose loading would run code) is refused, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointRejected(
            f"{located_as}: refused: not plain tensor data, so it was not loaded "
            f"(a file that needs more could run code on load): {first}"
        ) from exc


def read_local(directory: Path, located_as: str | None = None) -> CheckpointFiles:
    """Read a checkpoint directory without executing anything it holds."""
    where = located_as or str(directory)
    try:
        adapter = load_file(str(directory / ADAPTER_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointRejected(f"{where}/{ADAPTER_FILE}: not a safetensors file ({exc})") from exc
    optimizer = load_tensor_file(directory / OPTIMIZER_FILE, f"{where}/{OPTIMIZER_FILE}")
    scheduler = load_tensor_file(directory / SCHEDULER_FILE, f"{where}/{SCHEDULER_FILE}")
    rng = load_tensor_file(directory / RNG_FILE, f"{where}/{RNG_FILE}")
    for name, value in ((OPTIMIZER_FILE, optimizer), (SCHEDULER_FILE, scheduler), (RNG_FILE, rng)):
        if not isinstance(value, dict):
            raise CheckpointRejected(f"{where}/{name}: expected a dict, found {type(value).__name__}")
    try:
        state = TrainerState.model_validate_json((directory / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointRejected(f"{where}/{STATE_FILE}: unreadable ({exc})") from exc
    return CheckpointFiles(adapter, optimizer, scheduler, rng, state)


def apply_local(
    files: CheckpointFiles,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    adapter_dtype: torch.dtype,
) -> TrainerState:
    """Restore a safely read checkpoint into freshly built objects."""
    weights = files.adapter
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        missing = sorted(set(params) - set(weights))[:3]
        extra = sorted(set(weights) - set(params))[:3]
        raise CheckpointRejected(
            f"adapter weights do not match the model (missing {missing}, unexpected {extra}); "
            "was the job spec changed since the checkpoint?"
        )
    with torch.no_grad():
        for name, param in params.items():
            # Pin the dtype: whatever the checkpoint holds, the weights live in adapter_dtype, exactly
            # as in an uninterrupted run (the TRL/PEFT resume path silently switched bf16 -> fp32).
            param.data = weights[name].to(device=param.device, dtype=adapter_dtype)
    optimizer.load_state_dict(files.optimizer)
    scheduler.load_state_dict(files.scheduler)
    restore_rng_state(files.rng)
    return files.state


def load_local(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    adapter_dtype: torch.dtype,
) -> TrainerState:
    """Restore everything saved by `save_local` into freshly built objects."""
    return apply_local(read_local(directory), model, optimizer, scheduler, adapter_dtype)


def upload_with_manifest(
    storage: Storage,
    prefix: str,
    directory: Path,
    step: int | None = None,
    *,
    before_manifest: Callable[[], None],
) -> Manifest:
    """Upload every file under `prefix/`, the manifest last. Any old manifest there is deleted
    first so a half-overwritten directory can never pass verification."""
    manifest = build_manifest(directory, step)
    storage.delete(f"{prefix}/{layout.MANIFEST}")
    for rel in manifest.files:
        storage.put_file(f"{prefix}/{rel}", directory / rel)
        before_manifest()
    storage.put_bytes(f"{prefix}/{layout.MANIFEST}", encode(manifest))
    return manifest


# storage ----------------------------------------------------------------------


def stored_steps(storage: Storage, retry: ReadRetry | None = None) -> list[int]:
    """Steps that have anything under `checkpoints/`, ascending."""
    prefix = layout.CHECKPOINTS_DIR + "/"
    keys = (
        storage.list(prefix)
        if retry is None
        else read_with_retry(prefix, lambda: storage.list(prefix), retry)
    )
    steps = set()
    for key in keys:
        match = _STEP_DIR.match(key)
        if match:
            steps.add(int(match.group(1)))
    return sorted(steps)


def read_latest(storage: Storage, retry: ReadRetry | None = None) -> int | None:
    """The committed step LATEST names; None when there is no LATEST. Without `retry` any
    storage error also reads as None (what a commit in progress needs); with it, an outage
    raises `CheckpointUnreadable`: "cannot read LATEST" must never mean "start over"."""
    try:
        if retry is None:
            raw = storage.get_bytes(layout.LATEST)
        else:
            raw = read_with_retry(layout.LATEST, lambda: storage.get_bytes(layout.LATEST), retry)
    except ObjectNotFound:
        return None
    except StorageError:
        if retry is not None:
            raise
        return None
    text = raw.decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def committed_steps(storage: Storage, retry: ReadRetry | None = None) -> list[int]:
    """Resume candidates, newest first: LATEST, then older steps that have a manifest."""
    latest = read_latest(storage, retry)
    if latest is None:
        return []

    def has_manifest(step: int) -> bool:
        key = layout.checkpoint_manifest(step)
        return (
            storage.exists(key) if retry is None else read_with_retry(key, lambda: storage.exists(key), retry)
        )

    older = [s for s in stored_steps(storage, retry) if s < latest and has_manifest(s)]
    return [latest, *sorted(older, reverse=True)]


def download_verified(storage: Storage, step: int, dest: Path, retry: ReadRetry = DEFAULT_READ_RETRY) -> Path:
    """Download checkpoint `step` to `dest`, checking every file against its manifest entry.
    `CheckpointRejected` when it is corrupt, `CheckpointUnreadable` when storage fails."""
    prefix = layout.checkpoint_dir(step)
    if dest.exists():
        shutil.rmtree(dest)
    key = layout.checkpoint_manifest(step)
    try:
        raw = read_with_retry(key, lambda: storage.get_bytes(key), retry)
    except (ObjectNotFound, IntegrityError) as exc:
        raise CheckpointRejected(f"{prefix}: manifest unreadable ({exc})") from exc
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValueError as exc:
        raise CheckpointRejected(f"{prefix}: manifest unreadable ({exc})") from exc
    missing = [f for f in REQUIRED_FILES if f not in manifest.files]
    if missing:
        raise CheckpointRejected(f"{prefix}: manifest lacks {missing}")
    for rel in manifest.files:
        if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
            raise CheckpointRejected(f"{prefix}: manifest names {rel!r}, not a file of the checkpoint")
    for rel, entry in manifest.files.items():
        target = dest / rel
        file_key = f"{prefix}/{rel}"
        try:
            info = read_with_retry(
                file_key,
                lambda k=file_key, t=target, e=entry: storage.get_file(k, t, expected_sha256=e.sha256),
                retry,
            )
        except (ObjectNotFound, IntegrityError) as exc:
            raise CheckpointRejected(f"{prefix}/{rel}: {exc}") from exc
        if info.size != entry.size or target.stat().st_size != entry.size:
            raise CheckpointRejected(f"{prefix}/{rel}: size {info.size} != manifest {entry.size}")
    return dest


@dataclass(frozen=True)
class Restorable:
    step: int
    directory: Path
    rejected: list[tuple[int, str]]
    files: CheckpointFiles | None = None  # read safely; None when no checkpoint verified


def fetch_latest_valid(
    storage: Storage, work: Path, retry: ReadRetry = DEFAULT_READ_RETRY
) -> Restorable | None:
    """The newest committed checkpoint that verifies, downloaded; None to start from scratch
    (no LATEST); step -1 when every candidate is corrupt. Raises `CheckpointUnreadable` when
    storage fails past the retries: then nothing was rejected and nothing may be deleted."""
    rejected: list[tuple[int, str]] = []
    for step in committed_steps(storage, retry):
        try:
            directory = download_verified(storage, step, work / f"{step:08d}", retry)
            files = read_local(directory, layout.checkpoint_dir(step))
        except CheckpointRejected as exc:
            log.warning("checkpoint %d rejected: %s", step, exc)
            rejected.append((step, str(exc)))
            continue
        return Restorable(step, directory, rejected, files)
    if rejected:
        return Restorable(-1, work, rejected)
    return None


def quarantine(storage: Storage, rejected: list[tuple[int, str]], work: Path, tag: str) -> list[str]:
    """Move the rejected checkpoints (and LATEST) under `rejected-checkpoints/<tag>/`, with a
    `REJECTED.json` of the reasons, so a run that must start over from step 0 neither reuses
    nor destroys them. Everything is copied before anything is deleted (a storage error
    leaves the originals in place). A file whose bytes the storage itself refuses to return
    (its recorded sha256 differs) cannot be copied: the note records it. Returns the new keys."""
    base = f"{QUARANTINE_DIR}/{tag}"
    keys = [layout.LATEST] if storage.exists(layout.LATEST) else []
    for step, _ in rejected:
        keys += storage.list(layout.checkpoint_dir(step) + "/")
    local = work / "quarantine.tmp"
    local.parent.mkdir(parents=True, exist_ok=True)
    moved: list[str] = []
    uncopied: dict[str, str] = {}
    for key in keys:
        try:
            storage.get_file(key, local)
        except (ObjectNotFound, IntegrityError) as exc:
            uncopied[key] = str(exc)
            continue
        storage.put_file(f"{base}/{key}", local)
        moved.append(f"{base}/{key}")
    local.unlink(missing_ok=True)
    note = {"rejected": {str(step): reason for step, reason in rejected}, "not_copied": uncopied}
    storage.put_bytes(f"{base}/REJECTED.json", json.dumps(note, indent=2).encode())
    for step, _ in rejected:
        storage.delete(layout.checkpoint_manifest(step))
        storage.delete_prefix(layout.checkpoint_dir(step) + "/")
    storage.delete(layout.LATEST)
    return moved


def commit(storage: Storage, directory: Path, step: int, keep_last: int) -> Manifest:
    """Upload, write the manifest, then LATEST; then prune to the last `keep_last` commits."""
    manifest = upload_with_manifest(
        storage,
        layout.checkpoint_dir(step),
        directory,
        step,
        before_manifest=lambda: (FAULTS.pace_upload(), FAULTS.signal("kill_in_upload", step)),
    )
    storage.put_bytes(layout.LATEST, f"{step}\n".encode())
    prune(storage, keep_last, step)
    return manifest


def prune(storage: Storage, keep_last: int, latest: int) -> None:
    """Delete committed checkpoints beyond the newest `keep_last`, and leftovers of uploads
    that never committed. Manifests go first so a half-deleted directory never verifies."""
    steps = stored_steps(storage)
    kept = [s for s in steps if s <= latest and storage.exists(layout.checkpoint_manifest(s))]
    kept = sorted(kept, reverse=True)[:keep_last]
    for step in steps:
        if step in kept:
            continue
        prefix = layout.checkpoint_dir(step)
        storage.delete(f"{prefix}/{layout.MANIFEST}")
        storage.delete_prefix(prefix + "/")


def discard_after(storage: Storage, step: int) -> list[int]:
    """Delete uncommitted checkpoint directories above `step` (a killed upload's leftovers)."""
    gone = [s for s in stored_steps(storage) if s > step]
    for s in gone:
        storage.delete(layout.checkpoint_manifest(s))
        storage.delete_prefix(layout.checkpoint_dir(s) + "/")
    return gone
