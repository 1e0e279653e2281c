"""Benchmark: 100,000 training metric rows into Postgres (target: under 5 s on 2 cores).

Starts a throwaway Postgres 15 cluster (tests/fixtures/postgres.py), applies the
migrations, and times `repository.add_metrics` for the same 100k rows written as one
batch and as batches of 1,000 (how the monitor writes them). Prints the figures.

    .venv/bin/python benchmarks/bench_metrics_insert.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brightrun.registry import open_registry_url, upgrade  # noqa: E402
from brightrun.registry import repository as repo  # noqa: E402
from tests.fixtures.postgres import PostgresCluster  # noqa: E402


def records(n: int, attempt: int) -> list[dict[str, float | int]]:
    return [
        {
            "step": s,
            "attempt": attempt,
            "epoch": s / 1000,
            "loss": 2.0 / (1 + s / 1000),
            "learning_rate": 2e-4,
            "grad_norm": 0.5,
            "tokens_per_s": 1234.5,
        }
        for s in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    with PostgresCluster() as pg:
        url = pg.create_database("bench")
        upgrade(url)
        engine = open_registry_url(url)
        job = repo.create_job(engine, job_name="bench", base_model="tiny")

        rows = records(args.rows, attempt=1)
        t0 = time.perf_counter()
        written = repo.add_metrics(engine, job.id, rows)
        one_batch = time.perf_counter() - t0

        rows = records(args.rows, attempt=2)
        t0 = time.perf_counter()
        for i in range(0, len(rows), args.batch):
            written += repo.add_metrics(engine, job.id, rows[i : i + args.batch])
        batched = time.perf_counter() - t0

        rows = records(args.rows, attempt=1)  # re-ingesting the same records: merged, no new rows
        t0 = time.perf_counter()
        repo.add_metrics(engine, job.id, rows)
        reingest = time.perf_counter() - t0

        count = len(repo.list_metrics(engine, job.id))
        engine.dispose()
    assert written == 2 * args.rows and count == 2 * args.rows, (written, count)
    print(
        f"{args.rows:,} rows, one batch:              {one_batch:6.2f} s "
        f"({args.rows / one_batch:,.0f} rows/s)"
    )
    print(
        f"{args.rows:,} rows, batches of {args.batch:,}:      {batched:6.2f} s "
        f"({args.rows / batched:,.0f} rows/s)"
    )
    print(f"{args.rows:,} rows re-ingested (merge):     {reingest:6.2f} s")
    target = 5.0
    print(f"target < {target:.0f} s: {'met' if max(one_batch, batched) < target else 'MISSED'}")


if __name__ == "__main__":
    main()
