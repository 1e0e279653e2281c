"""Benchmark: the feedback export over 1,000,000 logged requests with 10% rated.

Starts a throwaway Postgres 15 (the tests' `PostgresCluster`), migrates it, bulk-loads
synthetic LexyHub logs with COPY, then runs the export in a fresh child process and
prints wall time, rows/s and the child's peak RSS. Target: < 30 s, < 500 MB on 2 cores.

    .venv/bin/python benchmarks/bench_export.py [--requests 1000000] [--rated 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY_S = 86_400
WORDS = (
    *("price", "trend", "listing", "shop", "mug", "candle", "print"),
    *("sticker", "holiday", "gift", "demand", "seasonal", "niche"),
)


def _uuid(kind: int, i: int) -> str:
    return f"{kind:08x}-0000-4000-8000-{i:012x}"


def _ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load(url: str, n_requests: int, rated: float, seed: int = 7) -> int:
    """COPY the synthetic logs in; returns the number of feedback rows."""
    import psycopg

    rng = random.Random(seed)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    n_feedback = 0
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        chunk = 50_000
        with cur.copy(
            "COPY lexybrain_requests (id, user_id, prompt, context, insight_type, requested_at) FROM STDIN"
        ) as copy:
            buf: list[str] = []
            for i in range(n_requests):
                # Every 100th question is asked again 10 requests later (both are rated): answers
                # to compare as preference pairs, and now and then the very same answer (a dup).
                base = i - 10 if i % 100 == 10 else i
                words = " ".join(rng.choice(WORDS) for _ in range(24))
                prompt = f"Request {base}: what should shop {base % 5000} stock next month?"
                if base % 100 != 0:
                    prompt += f" {words}"
                if i % 97 == 0:
                    prompt += f" Reach me at owner{i}@shop.example or +1 415 555 {i % 10000:04d}."
                context = json.dumps({"shop": f"shop-{base % 5000}", "listings": [base % 13], "region": "US"})
                buf.append(
                    f"{_uuid(1, i)}\t{_uuid(9, i % 20000)}\t{_escape(prompt)}\t{_escape(context)}\t"
                    f"{('trend', 'pricing', 'keywords')[base % 3]}\t{_ts(i * DAY_S / n_requests)}\n"
                )
                if len(buf) >= chunk:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        with cur.copy(
            "COPY lexybrain_responses (id, request_id, output, model_name, model_version, latency_ms, "
            "success, prompt_tokens, completion_tokens, created_at) FROM STDIN"
        ) as copy:
            buf = []
            for i in range(n_requests):
                same = i % 1000 in (0, 10)  # the repeated question gets the same answer
                output = json.dumps(
                    {"summary": f"Stock mugs for shop {(i - i % 1000) % 5000}"}
                    if same
                    else {
                        "summary": f"Stock {rng.choice(WORDS)} items for shop {i % 5000}",
                        "items": [
                            {"name": rng.choice(WORDS), "score": round(rng.random(), 3)} for _ in range(4)
                        ],
                        "confidence": round(rng.random(), 2),
                    }
                )
                success = "f" if i % 53 == 0 else "t"
                buf.append(
                    f"{_uuid(2, i)}\t{_uuid(1, i)}\t{_escape(output)}\tlexybrain\tv{1 + i % 3}\t"
                    f"{100 + i % 900}\t{success}\t{200 + i % 50}\t{150 + i % 40}\t"
                    f"{_ts(i * DAY_S / n_requests + 1)}\n"
                )
                if len(buf) >= chunk:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        with cur.copy(
            "COPY lexybrain_feedback (id, response_id, user_id, feedback, notes, created_at) FROM STDIN"
        ) as copy:
            buf = []
            step = max(1, round(1 / rated))
            for i in range(0, n_requests, step):
                r = rng.random()
                rating = "positive" if r < 0.8 else "negative" if r < 0.95 else "neutral"
                notes = "\\N" if rating != "neutral" else "fine"
                buf.append(
                    f"{_uuid(3, i)}\t{_uuid(2, i)}\t{_uuid(9, i % 20000)}\t{rating}\t{notes}\t"
                    f"{_ts(i * DAY_S / n_requests + 60)}\n"
                )
                n_feedback += 1
                if len(buf) >= chunk:
                    copy.write("".join(buf))
                    buf.clear()
            copy.write("".join(buf))
        cur.execute("ANALYZE")
    return n_feedback


def export_child(url: str, storage_dir: str) -> None:
    """Runs in a fresh process so its peak RSS is the export's alone."""
    from brightrun.resources import Resources
    from brightrun.settings import load_settings
    from tasks.feedback import export_feedback_window
    from tasks.feedback.dedup import scan_file_keys

    settings = load_settings(
        home=Path(storage_dir).parent / "home", database_url=url, storage_url=storage_dir
    )
    with Resources.from_settings(settings) as resources:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = export_feedback_window(
            resources, since=T0, until=T0 + timedelta(days=2), progress_every=10**9
        )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The next export dedups against this file: first scan (then cached by sha256).

    scan_started = time.perf_counter()
    keys = scan_file_keys(Path(result.training_file_uri or ""))
    scan_s = time.perf_counter() - scan_started
    print(
        json.dumps(
            {
                "status": result.status,
                "seconds": round(elapsed, 2),
                "cpu_seconds": round(cpu, 2),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "rows_read": result.stats.rows_read,
                "selected": result.stats.selected,
                "skipped": dict(result.stats.skipped),
                "deduped": dict(result.stats.deduped),
                "scrubbed": dict(result.stats.scrubbed),
                "preference_pairs": result.stats.preference_pairs,
                "file_mb": round(Path(result.training_file_uri or "").stat().st_size / 2**20, 1),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "next_export_scan_s": round(scan_s, 2),
                "scanned_pairs": sum(len(p) for _, p in keys),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rated", type=float, default=0.1)
    parser.add_argument("--export-child", nargs=2, metavar=("URL", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return

    from brightrun.registry import open_registry_url
    from tests.fixtures.postgres import PostgresCluster

    with PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        url = pg.create_database()
        open_registry_url(url, auto_upgrade=True).dispose()
        started = time.perf_counter()
        n_feedback = load(url, args.requests, args.rated)
        load_s = time.perf_counter() - started
        print(
            f"loaded {args.requests:,} requests/responses and {n_feedback:,} ratings "
            f"with COPY in {load_s:.1f}s"
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--export-child", url, str(Path(tmp) / "storage")],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            sys.exit(f"export failed:\n{proc.stderr[-4000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = figures["rows_read"] / figures["seconds"]
        print(json.dumps(figures, indent=2))
        print(
            f"export: {figures['rows_read']:,} rated rows in {figures['seconds']:.1f}s = {rate:,.0f} rows/s; "
            f"{figures['selected']:,} examples; exporter CPU {figures['cpu_seconds']:.1f}s; "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB; load average {figures['load_average_1m']} "
            f"(targets: < 30 s, < 500 MB)"
        )


if __name__ == "__main__":
    main()
