"""Serve the pipeline's flows from this process: no work pool, no worker (one machine).

    python -m deployments.serve            # against PREFECT_API_URL (or a local server)

Serves `train_adapter` (run it from the UI's form, or `run_deployment("train_adapter/serve")`),
`evaluate_adapter` and `promote_adapter` on demand, `export_feedback` on its nightly cron and
`reap_pods` every five minutes, the same schedules as prefect.yaml. Trainings share one global
concurrency slot, so two never collide on the GPU pool.
"""

from __future__ import annotations

from typing import Any

TRAIN_DEPLOYMENT = "serve"
EXPORT_CRON = "0 3 * * *"
REAP_INTERVAL_S = 300


def build_deployments(include_scheduled: bool = True) -> list[Any]:
    """RunnerDeployments for `serve`: training on demand, the export and the reaper on schedules."""
    from deployments.run_form import with_run_form_schema
    from flows.evaluate_adapter import evaluate_adapter
    from flows.export_feedback import export_feedback
    from flows.promote_adapter import promote_adapter
    from flows.reap_pods import reap_pods
    from flows.train_adapter import train_adapter

    deployments = [
        # The UI's run form from the flow's typed parameters, without 'Property is type None'.
        with_run_form_schema(
            train_adapter.to_deployment(
                name=TRAIN_DEPLOYMENT,
                tags=["brightrun", "training"],
                description="train_adapter served from this process",
                concurrency_limit=1,
                # The flow lists every bad parameter at once; the server's check names one.
                enforce_parameter_schema=False,
            )
        ),
        evaluate_adapter.to_deployment(name="on-demand", tags=["brightrun", "adapters"]),
        promote_adapter.to_deployment(name="on-demand", tags=["brightrun", "adapters"], concurrency_limit=1),
    ]
    if include_scheduled:
        deployments += [
            export_feedback.to_deployment(name="daily", cron=EXPORT_CRON, tags=["brightrun"]),
            reap_pods.to_deployment(name="every-5-minutes", interval=REAP_INTERVAL_S, tags=["brightrun"]),
        ]
    return deployments


def main() -> None:
    from prefect import serve

    serve(*build_deployments())


if __name__ == "__main__":
    main()
