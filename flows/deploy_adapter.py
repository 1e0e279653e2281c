"""`deploy_adapter`: an adapter onto the customer's RunPod Serverless endpoint (issue 24).

The `brightrun deploy` of the Prefect UI: copy the verified adapter to the endpoint's
network volume, point worker-vllm at it (one served name at 100%, or beside production
with `share` percent), wait for the rolling release, smoke-test every served name, and
only then record the split and the deployment status. Any failure puts the endpoint's env
back as it was. With `rollback`, the endpoint is re-pointed to the previous production
adapter instead. The run shows one Markdown artifact: the routes and the timings.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from brightrun.errors import InputError
from brightrun.resources import Resources


@flow(name="deploy_adapter", log_prints=True, retries=0)
def deploy_adapter(
    artifact: str | None = None,
    endpoint_id: str | None = None,
    share: int | None = None,
    force: bool = False,
    reason: str | None = None,
    max_lora_rank: int | None = None,
    rollback: bool = False,
    rollback_base_model: str | None = None,
) -> dict[str, Any]:
    """Deploy `artifact` to `endpoint_id` (default BRIGHTRUN_SERVING_ENDPOINT_ID), or roll back.

    Args:
        artifact: artifact id, job id, served name or `production` (not for a rollback).
        endpoint_id: the RunPod Serverless endpoint (worker-vllm).
        share: A/B: the candidate's percent of traffic beside production (1..99).
        force: skip the loss gate; `reason` is then required and recorded.
        reason: why (recorded with the deployment).
        max_lora_rank: raise the endpoint's MAX_LORA_RANK (vLLM's default is 16).
        rollback: re-point the endpoint to the previous production adapter.
        rollback_base_model: whose production adapter is rolled back.
    """
    from tasks.adapters import deploy as dp

    logger = get_run_logger()
    with Resources.from_settings() as resources:
        endpoint = endpoint_id or resources.settings.serving_endpoint_id
        if not endpoint:
            raise InputError("endpoint_id is required (or set BRIGHTRUN_SERVING_ENDPOINT_ID)")
        if rollback:
            result = dp.rollback(
                resources, endpoint, rollback_base_model, reason=reason, max_lora_rank=max_lora_rank
            )
        else:
            if not artifact:
                raise InputError("artifact is required to deploy (or set rollback)")
            result = dp.deploy(
                resources,
                artifact,
                endpoint,
                share=share,
                reason=reason,
                force=force,
                max_lora_rank=max_lora_rank,
            )
    lines = [f"# Endpoint {result.endpoint_id}", "", "| served name | artifact | share |", "|---|---|---|"]
    lines += [f"| `{r.served_name}` | `{r.artifact_id}` | {r.share_percent}% |" for r in result.routes]
    lines += ["", ", ".join(f"{k}: {v:.1f}" for k, v in result.timings.items())]
    create_markdown_artifact(
        key=f"endpoint-deploy-{result.endpoint_id.lower()}",
        markdown="\n".join(lines) + "\n",
        description=f"deployed to {result.endpoint_id}",
    )
    logger.info("endpoint %s serves %s", result.endpoint_id, [r.served_name for r in result.routes])
    return {
        "endpoint_id": result.endpoint_id,
        "deployment_id": result.deployment_id,
        "routes": [
            {"served_name": r.served_name, "artifact_id": r.artifact_id, "share_percent": r.share_percent}
            for r in result.routes
        ],
        "timings": result.timings,
    }
