"""A fast stand-in for `python -m trainer` that speaks the storage protocol (DESIGN.md §4).

`python -m tests.fake_runpod.fake_trainer --spec URI`: counts to the spec's
`training.max_steps`, one step every FAKE_TRAINER_STEP_SECONDS (default 0.2), writes the
heartbeat, metrics chunks and events, commits a checkpoint every
`checkpoint.every_steps` (state, then MANIFEST, then LATEST) and resumes from LATEST.
The final "adapter" is a function of the step count only, so an interrupted run's
result equals an uninterrupted one's exactly when resume is right.

Knobs (env): FAKE_TRAINER_FAIL_AT=<step> writes failure.json and exits 1;
FAKE_TRAINER_HANG_AT=<step> stops the heartbeat and hangs (first attempt only); FAKE_TRAINER_ECHO_ENV=<NAME>
writes that env value to `echo/<NAME>` (to check what reached the pod);
FAKE_TRAINER_GATE_FILE=<path> holds the first step (heartbeat running) until that file exists,
so a test can act while the job is certainly live.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from brightrun import layout
from brightrun.protocol import (
    Manifest,
    ManifestEntry,
    MetricRecord,
    TrainerEvent,
    TrainerPhase,
    TrainerResult,
    TrainerStatus,
)
from brightrun.spec import JobSpec
from brightrun.storage import open_storage, sha256_bytes, split_uri


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    args = parser.parse_args()
    prefix, name = split_uri(args.spec)
    storage = open_storage(prefix)
    spec = JobSpec.model_validate_json(storage.get_bytes(name))
    total = spec.training.max_steps or 10
    every = spec.checkpoint.every_steps
    step_seconds = float(os.environ.get("FAKE_TRAINER_STEP_SECONDS", "0.2"))
    fail_at = int(os.environ.get("FAKE_TRAINER_FAIL_AT", "0") or 0)
    hang_at = int(os.environ.get("FAKE_TRAINER_HANG_AT", "0") or 0)
    gate_file = os.environ.get("FAKE_TRAINER_GATE_FILE", "")
    for var in filter(None, os.environ.get("FAKE_TRAINER_ECHO_ENV", "").split(",")):
        storage.put_bytes(f"echo/{var}", os.environ.get(var, "<unset>").encode())

    attempt = 1
    if storage.exists(layout.STATUS):
        attempt = TrainerStatus.model_validate(storage.get_json(layout.STATUS)).attempt + 1
    step = int(storage.get_bytes(layout.LATEST).decode()) if storage.exists(layout.LATEST) else 0
    status = TrainerStatus(phase=TrainerPhase.training, attempt=attempt, step=step, total_steps=total)
    lock = threading.Lock()
    stop_beat = threading.Event()

    def write_status() -> None:
        with lock:
            status.updated_at = TrainerStatus(phase=status.phase, attempt=attempt).updated_at
            storage.put_bytes(layout.STATUS, status.model_dump_json().encode())

    def beat() -> None:
        while not stop_beat.wait(1.0):
            write_status()

    events = 0

    def event(type_: str, **payload: object) -> None:
        nonlocal events
        events += 1
        body = TrainerEvent(type=type_, attempt=attempt, payload=dict(payload)).model_dump_json()
        storage.put_bytes(layout.event_file(attempt, events), body.encode())

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    write_status()
    threading.Thread(target=beat, daemon=True).start()
    if step:
        event("resumed", from_step=step)
    while gate_file and not os.path.exists(gate_file):
        time.sleep(0.05)
    chunk = 0
    while step < total:
        time.sleep(step_seconds)
        step += 1
        if step == hang_at and attempt == 1:
            stop_beat.set()
            time.sleep(3600)
        if step == fail_at:
            storage.put_json(
                layout.FAILURE,
                {"job_id": spec.job_id, "phase": "training", "error": "injected failure", "error_type": "X"},
            )
            return 1
        with lock:
            status.step = step
            status.loss = 1.0 / step
        chunk += 1
        record = MetricRecord(step=step, epoch=step / total, loss=1.0 / step, attempt=attempt)
        storage.put_bytes(layout.metrics_file(attempt, chunk), (record.model_dump_json() + "\n").encode())
        if step % every == 0 or step == total:
            status.phase = TrainerPhase.checkpointing
            write_status()
            storage.put_json(f"{layout.checkpoint_dir(step)}/state.json", {"step": step})
            storage.put_json(layout.checkpoint_manifest(step), {"files": {}, "step": step})
            storage.put_bytes(layout.LATEST, str(step).encode())
            event("checkpoint_committed", step=step)
            status.phase = TrainerPhase.training
    status.phase = TrainerPhase.uploading
    write_status()
    weights = {"sum": sum(range(1, total + 1)), "steps": total}
    blob = json.dumps(weights).encode()
    storage.put_bytes(f"{layout.ADAPTER_DIR}/weights.json", blob)
    # The manifest last, as the real trainer does: the flow verifies and registers the adapter.
    entry = ManifestEntry(sha256=sha256_bytes(blob), size=len(blob))
    manifest = Manifest(files={"weights.json": entry}, step=total)
    storage.put_bytes(f"{layout.ADAPTER_DIR}/{layout.MANIFEST}", manifest.model_dump_json().encode())
    result = TrainerResult(
        job_id=spec.job_id,
        steps=total,
        epochs=1.0,
        train_loss=1.0 / total,
        eval_loss=None,
        perplexity=None,
        adapter_prefix=layout.ADAPTER_DIR,
        adapter_size_bytes=len(json.dumps(weights)),
        train_seconds=total * step_seconds,
        attempts=attempt,
    )
    storage.put_bytes(layout.RESULT, result.model_dump_json().encode())
    stop_beat.set()
    status.phase = TrainerPhase.completed
    write_status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
