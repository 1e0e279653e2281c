"""Serve the pipeline's flows from this process: no work pool, no worker (one machine).

    python -m deployments.serve            # against PREFECT_API_URL (or a local server)

Serves `train_adapter` (run it from the UI's form, or `run_deployment("train_adapter/serve")`),
`export_feedback` on its nightly cron and `reap_pods` every five minutes, the same schedules
as prefect.yaml. Trainings share one global concurrency slot, so two never collide on the
GPU pool.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger("deployments.serve")

TRAIN_DEPLOYMENT = "serve"
EXPORT_CRON = "0 3 * * *"
REAP_INTERVAL_S = 300
EXTRA_FLOWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("flows.export_feedback", "export_feedback", {"name": "daily", "cron": EXPORT_CRON}),
    ("flows.reap_pods", "reap_pods", {"name": "every-5-minutes", "interval": REAP_INTERVAL_S}),
)


def build_deployments(include_scheduled: bool = True) -> list[Any]:
    """RunnerDeployments for `serve` (the scheduled ones only when their flow module exists)."""
    from flows.train_adapter import train_adapter

    deployments = [
        train_adapter.to_deployment(
            name=TRAIN_DEPLOYMENT,
            tags=["brightrun", "training"],
            description="train_adapter served from this process",
            concurrency_limit=1,
        )
    ]
    if not include_scheduled:
        return deployments
    for module_name, attr, options in EXTRA_FLOWS:
        try:
            flow = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            log.warning("not serving %s: %s", attr, exc)
            continue
        deployments.append(flow.to_deployment(tags=["brightrun"], **options))
    return deployments


def main() -> None:
    from prefect import serve

    serve(*build_deployments())


if __name__ == "__main__":
    main()
