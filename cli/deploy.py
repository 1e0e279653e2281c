"""`brightrun deploy`: an adapter onto the customer's RunPod Serverless endpoint (issue 24).

The work is in tasks/adapters/deploy.py; nothing here loads torch.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from brightrun.errors import InputError

EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", help="RunPod endpoint id (default: BRIGHTRUN_SERVING_ENDPOINT_ID)"),
]


def deploy(
    artifact: Annotated[str, typer.Argument(help="Artifact id, job id, served name, or `production`")],
    endpoint: EndpointOpt = None,
    share: Annotated[
        int | None,
        typer.Option("--share", min=1, max=100, help="A/B: the candidate's percent, beside production"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Skip the loss gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the deploy")] = None,
    max_lora_rank: Annotated[
        int | None, typer.Option("--max-lora-rank", help="Raise the endpoint's MAX_LORA_RANK to this")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text")] = False,
) -> None:
    """Copy the verified adapter to the endpoint's volume, point worker-vllm at it, wait for
    the release, smoke-test it, and only then record it (production at 100%)."""
    from brightrun.resources import Resources
    from tasks.adapters.deploy import deploy as do_deploy

    with Resources.from_settings() as resources:
        endpoint_id = endpoint or resources.settings.serving_endpoint_id
        if not endpoint_id:
            raise InputError("give --endpoint ID or set BRIGHTRUN_SERVING_ENDPOINT_ID")
        result = do_deploy(
            resources,
            artifact,
            endpoint_id,
            share=share,
            reason=reason,
            force=force,
            max_lora_rank=max_lora_rank,
        )
    routes = [
        {"served_name": r.served_name, "artifact_id": r.artifact_id, "share_percent": r.share_percent}
        for r in result.routes
    ]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "endpoint_id": result.endpoint_id,
                    "deployment_id": result.deployment_id,
                    "routes": routes,
                    "timings": result.timings,
                },
                indent=2,
            )
        )
        return
    for r in routes:
        typer.echo(f"{result.endpoint_id}: {r['served_name']} ({r['artifact_id']}) {r['share_percent']}%")
    typer.echo(", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
