"""Benchmark: `decide_ab` over 1,000,000 rated responses in Postgres.

Starts a throwaway Postgres 15 (the tests' `PostgresCluster`), migrates it, splits an
endpoint 90/10 between two adapters, bulk-loads synthetic logs with COPY (one request, one
response and one rating each; 5% of them under a label that names no adapter), ANALYZEs,
then times the per-arm query (`ab_stats.thumbs_by_served_name`, window on the responses),
the decision by each method (`brightrun.ab.decide`), and a whole recommend-only
`run_decision` (routes, artifacts, query, decision). Prints the figures.

    .venv/bin/python benchmarks/bench_decide_ab.py [--responses 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _uuid(kind: int, i: int) -> str:
    return f"{kind:08x}-0000-4000-8000-{i:012x}"


def _load(url: str, n: int, prod: str, cand: str) -> None:
    import psycopg

    from tests.ab_helpers import T0

    rates = {prod: 0.60, cand: 0.62, "gpt-4o": 0.5}
    with psycopg.connect(url.replace("+psycopg", "")) as conn, conn.cursor() as cur:
        for table, columns in (
            ("lexybrain_requests", "id, user_id, prompt, requested_at"),
            ("lexybrain_responses", "id, request_id, model_version, created_at"),
            ("lexybrain_feedback", "id, response_id, user_id, feedback, created_at"),
        ):
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                buf: list[str] = []
                for i in range(n):
                    at = (T0 + timedelta(seconds=i + 1)).isoformat()
                    name = "gpt-4o" if i % 20 == 0 else (cand if i % 10 == 1 else prod)
                    user = _uuid(9, i % 200_000)
                    if table == "lexybrain_requests":
                        buf.append(f"{_uuid(1, i)}\t{user}\tq{i}\t{at}\n")
                    elif table == "lexybrain_responses":
                        buf.append(f"{_uuid(2, i)}\t{_uuid(1, i)}\t{name}\t{at}\n")
                    else:
                        up = (i * 2654435761 % 1000) < rates[name] * 1000
                        value = "positive" if up else "negative"
                        buf.append(f"{_uuid(3, i)}\t{_uuid(2, i)}\t{user}\t{value}\t{at}\n")
                    if len(buf) >= 50_000:
                        copy.write("".join(buf))
                        buf.clear()
                copy.write("".join(buf))
        conn.commit()
        conn.autocommit = True
        for table in ("lexybrain_requests", "lexybrain_responses", "lexybrain_feedback"):
            conn.execute(f"ANALYZE {table}")  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from brightrun.ab import ABRule, decide
    from brightrun.registry import ab_stats, open_registry_url, upgrade
    from brightrun.resources import Resources
    from brightrun.settings import load_settings
    from tasks.ab import run_decision
    from tests.ab_helpers import ENDPOINT, T0, split
    from tests.fixtures.postgres import PostgresCluster

    with PostgresCluster() as pg:
        url = pg.create_database()
        upgrade(url)
        engine = open_registry_url(url)
        prod, cand = split(engine, share=10, at=T0)
        t = time.perf_counter()
        _load(url, args.responses, str(prod.served_name), str(cand.served_name))
        print(
            f"loaded {args.responses:,} rated responses (COPY + ANALYZE) in {time.perf_counter() - t:.1f} s"
        )

        names = [str(prod.served_name), str(cand.served_name)]
        query_s, lean_s = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            arms = ab_stats.thumbs_by_served_name(engine, since=T0, served_names=names, window="response")
            query_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ab_stats.thumbs_by_served_name(
                engine, since=T0, served_names=names, window="response", count_users=False
            )
            lean_s.append(time.perf_counter() - t)
        by_name = {a.model_version: a for a in arms}
        for name in names:
            a = by_name[name]
            print(
                f"  arm {name}: {a.rated_responses:,} rated, {a.users:,} users, "
                f"{a.positive_rate:.2%} positive"
            )
        print(
            f"per-arm query: median {statistics.median(lean_s) * 1000:.0f} ms (what decide_ab runs), "
            f"{statistics.median(query_s) * 1000:.0f} ms with distinct users (ab status), {args.repeat} runs"
        )
        t = time.perf_counter()
        everything = ab_stats.thumbs_by_served_name(engine)
        print(
            f"feedback-stats query (every version, {len(everything)} rows): "
            f"{(time.perf_counter() - t) * 1000:.0f} ms"
        )

        for method in ("two_proportion", "bayesian"):
            rule = ABRule(method=method)
            t = time.perf_counter()
            decision = decide(by_name[names[0]].arm(), by_name[names[1]].arm(), rule)
            print(f"decide ({method}): {(time.perf_counter() - t) * 1000:.1f} ms -> {decision.reason}")

        settings = load_settings(database_url=url)
        with Resources.from_settings(settings) as resources:
            t = time.perf_counter()
            outcome = run_decision(resources, ENDPOINT, ABRule(method="bayesian"), recommend_only=True)
            whole = time.perf_counter() - t
        print(
            f"run_decision (recommend-only, bayesian), end to end: {whole * 1000:.0f} ms "
            f"-> {outcome.decision.action}"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
