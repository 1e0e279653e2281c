"""Step time of DPO and KTO against SFT on the same data, tiny model, real trainer.

    .venv/bin/python benchmarks/bench_preference.py [--steps 20] [--batch-size 4] [--packing|--no-packing]

From the sample dataset (examples/brightrun-sample.json): the DPO pairs of
tests/fixtures/preferences.py (sample reply chosen over a dismissive one), the same replies
as KTO thumbs (each pair gives one up and one down), and SFT on the chosen replies (prompt +
chosen, the same prompts). Each runs `python -m trainer` for `--steps` optimizer steps at
batch x accumulation 4 x 1 on plain LoRA (CPU) and prints seconds per optimizer step
(result.json's train_seconds / steps), tokens per step, the time outside the steps (process
start, model load, reference log-probs, evaluations, upload) and the held-out preference
accuracy at the end (eval.json; none for SFT).

A DPO step scores 2 sequences per example and a KTO step 2 (the completion and its KL
partner), so both process about twice SFT's tokens per step at the same batch size.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sft_from_pairs(dpo_dir: Path, out: Path) -> None:
    """The DPO set's prompt + chosen reply as prepared SFT examples (same prompts, same tokens)."""
    from brightrun import prepared
    from brightrun.storage import sha256_file

    out.mkdir(parents=True)
    meta = prepared.read_meta(dpo_dir)
    counts = {}
    for name in (prepared.TRAIN, prepared.VALIDATION):
        lines = []
        for i, p in enumerate(prepared.iter_preferences(dpo_dir / name)):
            assert p.chosen_ids is not None
            ex = prepared.PreparedExample(
                input_ids=p.prompt_ids + p.chosen_ids,
                labels=[prepared.IGNORE_INDEX] * len(p.prompt_ids) + p.chosen_ids,
                conversation_id=f"pair-{i}",
            )
            lines.append(ex.model_dump_json())
        (out / name).write_text("".join(line + "\n" for line in lines))
        counts[name] = len(lines)
    sft_meta = meta.model_copy(
        update={
            "format": prepared.FORMAT,
            "objective": "sft",
            "train_examples": counts[prepared.TRAIN],
            "validation_examples": counts[prepared.VALIDATION],
            "files_sha256": {n: sha256_file(out / n) for n in counts},
        }
    )
    (out / prepared.META).write_text(sft_meta.model_dump_json())


def run(objective: str, model: Path, data: Path, root: Path, args: argparse.Namespace) -> dict[str, float]:
    from brightrun.storage import LocalStorage
    from tests.fixtures.training import create_job, small_spec, trainer_env

    spec = small_spec(
        f"bench-{objective}",
        model,
        quantization={"load_in_4bit": False},
        training={
            "objective": objective,
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "gradient_accumulation_steps": 1,
            "packing": args.packing,
        },
        checkpoint={"every_steps": 1000, "every_seconds": 1e6},
        evaluation={"sample_generations": 0},
    )
    uri = create_job(root / objective, data, spec)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--spec", uri],
        env=trainer_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{objective} failed:\n{proc.stderr[-3000:]}")
    storage = LocalStorage(Path(uri).parent)
    result = storage.get_json("result.json")
    preference = storage.get_json("eval.json").get("preference") or {}
    records = []
    for key in storage.list("metrics/"):
        records += [json.loads(x) for x in storage.get_bytes(key).decode().splitlines() if x]
    last = max((r for r in records if r["loss"] is not None), key=lambda r: r["step"])
    return {
        "s_per_step": result["train_seconds"] / result["steps"],
        "tokens_per_step": last["tokens_processed"] / result["steps"],
        "overhead_s": wall - result["train_seconds"],
        "held_out_accuracy": preference.get("reward_accuracy", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from brightrun.tiny_model import build_tiny_model
    from tasks.dataset.preferences import PreferenceOptions, prepare_preferences
    from tests.fixtures.preferences import write_dpo, write_kto

    sample = REPO / "examples" / "brightrun-sample.json"
    root = Path(tempfile.mkdtemp(prefix="bench-preference-"))
    try:
        model = build_tiny_model(root / "tiny", sample)
        sets = {}
        for objective, write in (("dpo", write_dpo), ("kto", write_kto)):
            source = write(sample, root / f"{objective}.jsonl")
            sets[objective] = root / f"prepared-{objective}"
            prepare_preferences(source, model, sets[objective], PreferenceOptions(objective, 256, 0.25, 7))
        sets["sft"] = root / "prepared-sft"
        sft_from_pairs(sets["dpo"], sets["sft"])
        figures = {o: run(o, model, sets[o], root, args) for o in ("sft", "dpo", "kto")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = figures["sft"]
    print(
        f"tiny model, CPU, plain LoRA, batch {args.batch_size} x 1, packing={args.packing}, "
        f"{args.steps} steps"
    )
    print(
        f"{'objective':<10}{'s/step':>10}{'vs SFT':>9}{'tokens/step':>13}{'setup+eval s':>14}"
        f"{'held-out acc':>14}"
    )
    for name, f in figures.items():
        ratio = f["s_per_step"] / base["s_per_step"]
        print(
            f"{name:<10}{f['s_per_step']:>10.4f}{ratio:>8.2f}x{f['tokens_per_step']:>13.0f}"
            f"{f['overhead_s']:>14.1f}{f['held_out_accuracy']:>14.2f}"
        )


if __name__ == "__main__":
    main()
