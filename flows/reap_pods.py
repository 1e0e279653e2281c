"""`reap_pods`: the scheduled flow that terminates pods no job should hold (DESIGN.md §3).

Runs on a schedule (every 5 minutes, prefect.yaml) as the last line of defence when a
`train_adapter` flow process died before its own cleanup, or its cleanup could not reach
the provider (a pod recorded as `pod_termination_failed`); it also retries the webhook
outbox (tasks/webhooks.py). The reaper itself is
`tasks.reaper.reap_pods_with`, which `brightrun reap` calls without Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.reaper import DEFAULT_STALE_AFTER_SECONDS, DEFAULT_STARTUP_GRACE_SECONDS, reap_pods_with
from tasks.webhooks import OutboxRun, deliver_pending_with


@flow(name="reap_pods", log_prints=False)
def reap_pods(
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
    include_untagged: bool = False,
) -> list[dict[str, str]]:
    """Terminate pods (local and RunPod) whose job is terminal, unknown, silent or stuck before
    it started; `dry_run` only lists them."""
    from brightrun.resources import Resources

    logger = get_run_logger()
    with Resources.from_settings() as resources:  # built once, at the flow's boundary
        reaped = reap_pods_with(
            resources,
            dry_run=dry_run,
            stale_after_seconds=stale_after_seconds,
            startup_grace_seconds=startup_grace_seconds,
            include_untagged=include_untagged,
        )
        # The webhook outbox rides on this schedule (no registry yet: nothing is waiting).
        ready = not dry_run and resources.registry_exists()
        webhooks = deliver_pending_with(resources) if ready else OutboxRun()
    if webhooks.delivered or webhooks.failed or webhooks.expired:
        logger.info("webhook outbox: %s", webhooks)
    for item in reaped:
        logger.warning("%s pod %s: %s", item["result"], item["pod_id"], item["reason"])
    logger.info("%d pod(s) judged for reaping", len(reaped))
    return reaped
