"""`brightrun reap` and `brightrun runpod prices`."""

from __future__ import annotations

import typer

runpod_app = typer.Typer(help="RunPod: GPU prices and pods.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.command("reap")(reap_command)
    app.add_typer(runpod_app, name="runpod")


def reap_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="List the pods that would be terminated"),
    stale_after: float = typer.Option(900.0, help="Seconds of heartbeat silence before a pod is reaped"),
    startup_grace: float = typer.Option(
        1800.0, help="Seconds a pod may sit unstarted (CREATED) or without a first heartbeat"
    ),
    include_untagged: bool = typer.Option(
        False,
        "--include-untagged",
        help="Also reap brightrun-* pods that carry no registry id (by default only reported: "
        "they may be another registry's)",
    ),
) -> None:
    """Terminate pods (local trainers, and RunPod when a key is set) whose job is terminal,
    unknown, silent, or stuck before it started."""
    from brightrun.resources import Resources
    from tasks.reaper import reap_pods_with

    with Resources.from_settings() as resources:
        reaped = reap_pods_with(
            resources,
            dry_run=dry_run,
            stale_after_seconds=stale_after,
            startup_grace_seconds=startup_grace,
            include_untagged=include_untagged,
        )
        if not dry_run and resources.registry_exists():
            from tasks.webhooks import deliver_pending_with

            webhooks = deliver_pending_with(resources)
            if webhooks.delivered or webhooks.failed or webhooks.expired:
                typer.echo(
                    f"webhook outbox: {webhooks.delivered} delivered, {webhooks.failed} to retry, "
                    f"{webhooks.expired} expired (lost)"
                )
    for item in reaped:
        typer.echo(f"{item['result']} {item['pod_id']} (job {item['job_id']}): {item['reason']}")
    failed = [item for item in reaped if item["result"].startswith("failed")]
    reported = [item for item in reaped if item["result"].startswith("reported")]
    verb = "would terminate" if dry_run else "terminated"
    typer.echo(f"{verb} {len(reaped) - len(failed) - len(reported)} pod(s)")
    if reported:
        typer.echo(
            f"{len(reported)} untagged pod(s) reported, not terminated (they may be another registry's); "
            "`brightrun reap --include-untagged` reaps them"
        )
    if failed:
        typer.echo(f"{len(failed)} pod(s) could not be terminated; run `brightrun reap` again", err=True)
        raise typer.Exit(1)


@runpod_app.command("prices")
def prices_command(gpu_count: int = typer.Option(1, min=1, max=8, help="GPUs per pod")) -> None:
    """Spot minimum bid and on-demand price per GPU type (USD/hr for the whole pod)."""
    from brightrun.compute.runpod import RunPodCompute
    from brightrun.resources import Resources
    from brightrun.settings import ComputeBackend

    with Resources.from_settings() as resources:
        compute = resources.compute(ComputeBackend.runpod)
        assert isinstance(compute, RunPodCompute)
        prices = compute.api.gpu_prices(gpu_count)
    rows = sorted(prices, key=lambda p: (p.on_demand_price is None, p.on_demand_price))
    typer.echo(f"{'GPU type':<28} {'memory':>7} {'spot bid':>9} {'on-demand':>10}")
    for p in rows:
        spot = f"{p.spot_min_bid:.3f}" if p.spot_min_bid is not None else "-"
        od = f"{p.on_demand_price:.3f}" if p.on_demand_price is not None else "-"
        mem = f"{p.memory_gb} GB" if p.memory_gb else "-"
        typer.echo(f"{p.id:<28} {mem:>7} {spot:>9} {od:>10}")
