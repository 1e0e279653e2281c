"""Trainer benchmark: checkpoint cost, resume time, padding share and throughput.

    .venv/bin/python benchmarks/bench_trainer.py [--steps 100] [--kill-at 60] [--no-quantize] [--processes 2]

Builds the tiny model, prepares the sample dataset with the real dataset stage, then runs
the real entry point (`python -m trainer`) on a local storage with the job spec defaults
(4-bit QLoRA, batch 4 x 4 accumulation, checkpoint every 50 steps / 600 s):

1. an uninterrupted run: checkpoint save+commit share of wall time (target <= 5 %),
   padding share of the tokens processed (target <= 5 %), tokens/s;
2. a run SIGKILLed at `--kill-at`, then restarted: seconds from the restart to its first
   trained step (target <= 30 s), and steps lost.

`--processes N` runs both under torchrun with N data-parallel processes (gloo on the CPU,
NCCL with one GPU each), as a pod with `provisioning.gpu_count` N does.

The GPU figures (8B shapes, MFU, peak memory, 70B fit) come from benchmarks/gpu_check.py.
Reading the same on a GPU: run this script on the GPU machine (the trainer picks CUDA,
bf16 compute and paged AdamW 8-bit by itself) with `--base-model` pointing at a real
model, or read any job's storage: `events/*checkpoint_committed*` carry `seconds` per
checkpoint, `result.json` has `train_seconds` and `tokens_per_s`, the metric records in
`metrics/*.jsonl` carry `tokens_per_s`, `padding_tokens`, `peak_memory_mb` and `mfu`
(model FLOPs utilisation, 6 x parameters x tokens/s over the GPU's bf16 peak), and the
first record of attempt N against the `resumed` event's time gives the resume time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brightrun import layout  # noqa: E402
from brightrun.storage import LocalStorage  # noqa: E402

SAMPLE = REPO / "examples" / "brightrun-sample.json"


PROCESSES = 1


def _trainer(spec_uri: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    launch = [sys.executable]
    if PROCESSES > 1:  # what brightrun.compute.runpod starts on a pod with several GPUs
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={PROCESSES}"]
    return subprocess.run(
        [*launch, "-m", "trainer", "--spec", spec_uri], env=full_env, capture_output=True, text=True
    )


def _job(root: Path, prepared: Path, job_id: str, spec: dict[str, object]) -> LocalStorage:
    storage = LocalStorage(root / "jobs" / job_id)
    storage.put_dir("data", prepared)
    storage.put_json("spec.json", spec)
    return storage


def _records(storage: LocalStorage) -> list[dict[str, object]]:
    out = []
    for key in storage.list("metrics/"):
        out.extend(json.loads(line) for line in storage.get_bytes(key).decode().splitlines() if line)
    return out


def _events(storage: LocalStorage, kind: str) -> list[dict[str, object]]:
    return [e for e in (storage.get_json(k) for k in storage.list("events/")) if e["type"] == kind]


def _unpacked_padding(prepared: Path, *, group: bool = True) -> float:
    from trainer.data import TargetStream, load_examples, padding_share

    examples = load_examples(prepared / "train.jsonl", 1 << 20)
    stream = TargetStream(examples, 4, seed=42, group_by_length=group)
    return padding_share(stream, stream.batches_per_epoch * 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 60 steps cover one checkpoint at the default cadence (every 50 steps); batch 1 x 2 keeps
    # the CPU run to minutes. Smaller steps make the checkpoint share look larger, not smaller.
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--kill-at", type=int, default=55)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--base-model", help="a model path or hub id (default: the tiny model)")
    parser.add_argument("--processes", type=int, default=1, help="data-parallel processes (torchrun)")
    args = parser.parse_args()
    global PROCESSES
    PROCESSES = args.processes
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    try:
        return _bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    from brightrun.tiny_model import ensure_tiny_model
    from tasks.dataset import PrepareOptions, prepare_dataset

    model = args.base_model or str(ensure_tiny_model(work / "tiny-llama", SAMPLE))
    prepared = work / "prepared"
    report = prepare_dataset(SAMPLE, model, prepared, PrepareOptions(skip_overlong_targets=True))
    spec: dict[str, object] = {
        "base_model": model,
        "quantization": {"load_in_4bit": not args.no_quantize},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "gradient_accumulation_steps": args.grad_accum,
        },
        "evaluation": {"sample_generations": 1, "max_new_tokens": 16},
    }

    # 1. uninterrupted run
    storage = _job(work, prepared, "full", {**spec, "job_id": "full"})
    started = time.perf_counter()
    proc = _trainer(storage.uri("spec.json"))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    result = storage.get_json(layout.RESULT)
    ckpt = [e["payload"]["seconds"] for e in _events(storage, "checkpoint_committed")]
    train_s = result["train_seconds"]
    last = max((r for r in _records(storage) if r["loss"] is not None), key=lambda r: r["step"])
    padding = last["padding_tokens"] / (last["tokens_processed"] + last["padding_tokens"])

    # 2. SIGKILL after a committed checkpoint, then restart
    killed = _job(work, prepared, "killed", {**spec, "job_id": "killed"})
    _trainer(killed.uri("spec.json"), {"BRIGHTRUN_TRAINER_FAULT": f"kill_after_step:{args.kill_at}"})
    restart_at = time.time()
    proc = _trainer(killed.uri("spec.json"))
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    first = min(
        (r for r in _records(killed) if r["attempt"] == 2 and r["loss"] is not None), key=lambda r: r["step"]
    )
    first_step_at = datetime.fromisoformat(str(first["time"]).replace("Z", "+00:00")).timestamp()
    resumed = _events(killed, "resumed")[0]["payload"]

    print(
        f"base model: {model}  ({'plain LoRA' if args.no_quantize else '4-bit NF4 QLoRA'}, CPU, "
        f"{args.processes} process(es))"
    )
    print(
        f"dataset: {report.train.examples} train / {report.validation.examples} validation sequences, "
        f"{args.steps} steps of {args.batch_size} x {args.grad_accum}"
    )
    print(f"run wall time (process): {wall:.1f} s; training steps: {train_s:.1f} s")
    print(
        f"checkpoints: {len(ckpt)} x {sum(ckpt) / max(len(ckpt), 1):.3f} s; "
        f"save+commit share of training wall time: {100 * sum(ckpt) / (train_s + sum(ckpt)):.2f} % "
        "(target <= 5 %)"
    )
    print(f"padding share of tokens processed (packing, the default): {100 * padding:.2f} % (target <= 5 %)")
    print(
        f"padding share without packing, length-grouped, batch 4: {100 * _unpacked_padding(prepared):.2f} %; "
        f"ungrouped: {100 * _unpacked_padding(prepared, group=False):.2f} %"
    )
    print(f"throughput: {result['tokens_per_s']:.0f} tokens/s over {last['tokens_processed']} tokens")
    print(
        f"resume: killed at step {args.kill_at}, resumed from {resumed['from_step']} "
        f"({args.kill_at - resumed['from_step']} steps redone); restart to first resumed step: "
        f"{first_step_at - restart_at:.1f} s (target <= 30 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
