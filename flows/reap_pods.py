"""`reap_pods`: the scheduled flow that terminates pods no job should hold (DESIGN.md §3).

Runs on a schedule (every 5 minutes, prefect.yaml) as the last line of defence when a
`train_adapter` flow process died before its own cleanup, or its cleanup could not reach
the provider (a pod recorded as `pod_termination_failed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

from tasks.reaper import DEFAULT_STALE_AFTER_SECONDS, DEFAULT_STARTUP_GRACE_SECONDS

if TYPE_CHECKING:
    from brightrun.resources import Resources


def reap_pods_with(
    resources: Resources,
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[dict[str, str]]:
    """The reaper over `resources` (the registry, each job's storage, this machine's trainers and
    the RunPod account when a key is set); one row per pod judged, for people and scripts."""
    from tasks.reaper import reap_with_resources

    decisions = reap_with_resources(
        resources,
        dry_run=dry_run,
        stale_after_seconds=stale_after_seconds,
        startup_grace_seconds=startup_grace_seconds,
    )
    return [
        {
            "pod_id": d.pod.pod_id,
            "job_id": d.pod.job_id,
            "reason": d.reason,
            "result": "would terminate"
            if dry_run
            else ("terminated" if d.terminated else f"failed: {d.error}"),
        }
        for d in decisions
    ]


def reap_with_settings(
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[dict[str, str]]:
    """`reap_pods_with` on resources built from the settings (for callers without any)."""
    from brightrun.resources import Resources

    with Resources.from_settings() as resources:
        return reap_pods_with(
            resources,
            dry_run=dry_run,
            stale_after_seconds=stale_after_seconds,
            startup_grace_seconds=startup_grace_seconds,
        )


@flow(name="reap_pods", log_prints=False)
def reap_pods(
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
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
        )
    for item in reaped:
        logger.warning("%s pod %s: %s", item["result"], item["pod_id"], item["reason"])
    logger.info("%d pod(s) judged for reaping", len(reaped))
    return reaped
