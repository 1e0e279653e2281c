"""What scaffolding balance costs the dataset stage: the scaffolding scan (a first, validating
pass over the file) and the planning, against the whole `prepare_dataset`, with and without a
cap, on generated brightrun-lora-v4 files (scripts/make_brightrun.py). Figures, no assertion.

    .venv/bin/python benchmarks/bench_balance.py [--conversations 242 2420]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(conversations: int, out: Path) -> Path:
    script = str(REPO / "scripts" / "make_brightrun.py")
    args = [sys.executable, script, "--conversations", str(conversations), "--seed", "0", "-o", str(out)]
    subprocess.run(args, check=True, capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, nargs="+", default=[242, 2420])
    args = ap.parse_args()
    from brightrun.tiny_model import build_tiny_model
    from tasks.dataset.prepare import PrepareOptions, _plan_balance, prepare_dataset
    from tasks.dataset.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = build_tiny_model(work / "tiny", REPO / "examples" / "brightrun-sample.json")
        tokenizer = load_tokenizer(tiny)
        print(
            "| conversations | scaffolding scan + plan s | prepare s (no cap) "
            "| prepare s (cap 0.15) | stratified |"
        )
        print("|---:|---:|---:|---:|---|")
        for n in args.conversations:
            source = generate(n, work / f"b{n}.json")
            t0 = time.perf_counter()
            plan, _ = _plan_balance(source, PrepareOptions(), None, None)
            scan = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepare_dataset(source, tokenizer, work / f"p{n}", PrepareOptions(skip_overlong_targets=True))
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            capped = prepare_dataset(
                source,
                tokenizer,
                work / f"c{n}",
                PrepareOptions(skip_overlong_targets=True, max_arc_share=0.15),
            )
            cap = time.perf_counter() - t0
            dropped = sum(capped.balance.dropped_by_arc.values())
            stratified = plan.report.stratified if plan else "?"
            print(f"| {n} | {scan:.2f} | {plain:.2f} | {cap:.2f} ({dropped} dropped) | {stratified} |")


if __name__ == "__main__":
    main()
