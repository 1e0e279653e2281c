"""`reap_pods`: the scheduled flow that terminates pods no job should hold (DESIGN.md §3).

Runs on a schedule (every 15 minutes is a good default) as the last line of defence
when a `train_adapter` flow process died before its own cleanup.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.reaper import DEFAULT_STALE_AFTER_SECONDS, DEFAULT_STARTUP_GRACE_SECONDS


def reap_with_settings(
    *,
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[dict[str, str]]:
    """The reaper wired to the registry, the storage, this machine's local trainers and, when
    a RunPod key is configured (or RunPod is the compute), the RunPod account."""
    from brightrun.compute import Compute
    from brightrun.compute.local import LocalCompute
    from brightrun.registry import open_registry
    from brightrun.settings import ComputeBackend, load_settings
    from brightrun.storage import open_storage
    from tasks.reaper import reap, registry_job_status, storage_heartbeat_age

    settings = load_settings()
    storage = open_storage(settings.resolved_storage_url, endpoint_url=settings.resolved_s3_endpoint_url)
    computes: list[Compute] = [LocalCompute(settings.home)]
    if settings.runpod_api_key is not None or settings.compute is ComputeBackend.runpod:
        from brightrun.compute.runpod import RunPodCompute

        computes.append(RunPodCompute.from_env())
    engine = open_registry(settings)
    try:
        decisions = [
            decision
            for compute in computes
            for decision in reap(
                compute,
                registry_job_status(engine),
                storage_heartbeat_age(storage),
                dry_run=dry_run,
                stale_after_seconds=stale_after_seconds,
                startup_grace_seconds=startup_grace_seconds,
            )
        ]
    finally:
        engine.dispose()
    return [{"pod_id": d.pod.pod_id, "job_id": d.pod.job_id, "reason": d.reason} for d in decisions]


@flow(name="reap_pods", log_prints=False)
def reap_pods(
    dry_run: bool = False,
    stale_after_seconds: float = DEFAULT_STALE_AFTER_SECONDS,
    startup_grace_seconds: float = DEFAULT_STARTUP_GRACE_SECONDS,
) -> list[dict[str, str]]:
    """Terminate pods (local and RunPod) whose job is terminal or silent; `dry_run` only lists them."""
    logger = get_run_logger()
    reaped = reap_with_settings(
        dry_run=dry_run, stale_after_seconds=stale_after_seconds, startup_grace_seconds=startup_grace_seconds
    )
    verb = "would terminate" if dry_run else "terminated"
    for item in reaped:
        logger.warning("%s pod %s: %s", verb, item["pod_id"], item["reason"])
    logger.info("%s %d pod(s)", verb, len(reaped))
    return reaped
