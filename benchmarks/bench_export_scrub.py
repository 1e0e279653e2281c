"""Benchmark: the export's per-log CPU (selection, scrubbing, dedup) without a database.

Builds benchmark-shaped rated logs in memory (the same prompts, contexts and outputs as
`bench_export.py`: 1 in 97 prompts holds an e-mail and a phone), folds them with
`process_rows` (no writer), and prints the PII analyzer's start-up time and the CPU per
log. CPU time, not wall time, so that it compares runs on a busy shared machine; run it
on two checkouts in turn to compare them.

    .venv/bin/python benchmarks/bench_export_scrub.py [--logs 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WORDS = (
    *("price", "trend", "listing", "shop", "mug", "candle", "print"),
    *("sticker", "holiday", "gift", "demand", "seasonal", "niche"),
)


def logs(n: int, seed: int = 7) -> list:
    from tasks.feedback.read import LogRow

    rng = random.Random(seed)
    out = []
    for k in range(n):
        i = k * 10
        words = " ".join(rng.choice(WORDS) for _ in range(24))
        prompt = f"Request {i}: what should shop {i % 5000} stock next month? {words}"
        if i % 97 == 0 or k % 97 == 0:
            prompt += f" Reach me at owner{i}@shop.example or +1 415 555 {i % 10000:04d}."
        output = {
            "summary": f"Stock {rng.choice(WORDS)} items for shop {i % 5000}",
            "items": [{"name": rng.choice(WORDS), "score": round(rng.random(), 3)} for _ in range(4)],
            "confidence": round(rng.random(), 2),
        }
        out.append(
            LogRow(
                feedback_id=f"f{k:08d}",
                response_id=f"r{k:08d}",
                feedback_user_id=f"0000{k % 20000:04d}-user",
                rating="positive",
                notes=None,
                feedback_at=T0 + timedelta(seconds=k),
                response_found=True,
                request_id=f"q{k:08d}",
                request_found=True,
                output_text=json.dumps(output),
                model_name="lexybrain",
                model_version="v1",
                success=True,
                request_user_id=f"0000{k % 20000:04d}-user",
                prompt=prompt,
                context_text=json.dumps({"shop": f"shop-{i % 5000}", "listings": [i % 13], "region": "US"}),
                insight_type=("trend", "pricing", "keywords")[i % 3],
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tasks.feedback import ExportStats, process_rows
    from tasks.feedback.dedup import Deduper
    from tasks.feedback.pii import pii_analyzer
    from tasks.feedback.select import PreferencePairs, SelectionOptions

    model = "en_core_web_lg"  # the default setting; not installed here, as on a fresh machine
    started = time.process_time()
    pii_analyzer(model)
    init_cpu = time.process_time() - started
    rows = logs(args.logs)
    options = SelectionOptions(pii_spacy_model=model)
    per_log = []
    for _ in range(args.rounds):
        stats = ExportStats()
        started = time.process_time()
        process_rows(iter(rows), options, Deduper(), None, PreferencePairs(), stats)
        per_log.append((time.process_time() - started) / len(rows) * 1e6)
    print(
        json.dumps(
            {
                "analyzer_start_cpu_s": round(init_cpu, 2),
                "logs": len(rows),
                "selected": stats.selected,
                "scrubbed": dict(stats.scrubbed),
                "cpu_us_per_log": [round(x, 1) for x in per_log],
                "best_cpu_us_per_log": round(min(per_log), 1),
                "torch_loaded": "torch" in sys.modules,
            }
        )
    )


if __name__ == "__main__":
    main()
