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
) -> None:
    """Terminate pods (local trainers, and RunPod when a key is set) whose job is terminal or silent."""
    from flows.reap_pods import reap_with_settings

    reaped = reap_with_settings(dry_run=dry_run, stale_after_seconds=stale_after)
    verb = "would terminate" if dry_run else "terminated"
    for item in reaped:
        typer.echo(f"{verb} {item['pod_id']} (job {item['job_id']}): {item['reason']}")
    typer.echo(f"{verb} {len(reaped)} pod(s)")


@runpod_app.command("prices")
def prices_command(gpu_count: int = typer.Option(1, min=1, max=8, help="GPUs per pod")) -> None:
    """Spot minimum bid and on-demand price per GPU type (USD/hr for the whole pod)."""
    from brightrun.compute.runpod_client import client_from_env

    client = client_from_env()
    rows = sorted(client.gpu_prices(gpu_count), key=lambda p: (p.on_demand_price is None, p.on_demand_price))
    typer.echo(f"{'GPU type':<28} {'memory':>7} {'spot bid':>9} {'on-demand':>10}")
    for p in rows:
        spot = f"{p.spot_min_bid:.3f}" if p.spot_min_bid is not None else "-"
        od = f"{p.on_demand_price:.3f}" if p.on_demand_price is not None else "-"
        mem = f"{p.memory_gb} GB" if p.memory_gb else "-"
        typer.echo(f"{p.id:<28} {mem:>7} {spot:>9} {od:>10}")
