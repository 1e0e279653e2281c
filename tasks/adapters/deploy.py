"""Deploy: registered adapters onto the customer's RunPod Serverless endpoint (worker-vllm).

Planning is pure (`plan_env`, `check_template`, `redact_env`): the new env is the old one
with the four keys we own (`ENABLE_LORA`, `MAX_LORAS`, `MAX_LORA_RANK`, `LORA_MODULES`) set,
every other key exactly as it was (saveTemplate replaces the whole env). Then the steps,
all or nothing: take the endpoint's lease, copy each verified adapter onto the endpoint's
network volume (checked against its manifest), save the template (a rolling release),
wait for the new workers, smoke-test every served name through the endpoint's OpenAI route,
and only then record the split and the deployment status. A failure after the env changed
puts the env before back (and waits for that release); what this deploy uploaded is
removed; the registry keeps only the deployment's record (`failed` or `restored`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.compute.runpod_serverless import (
    VOLUME_MOUNT,
    NetworkVolume,
    ServerlessClient,
    Template,
    serverless_client,
    volume_s3_url,
)
from brightrun.errors import BrightrunError, InputError
from brightrun.registry import endpoint_deployments as deployments
from brightrun.registry import promotion
from brightrun.registry import routes as routes_registry
from brightrun.registry.promotion import AdapterRow, DeploymentStatus, LifecycleResult
from brightrun.resources import Resources
from brightrun.storage import S3Storage

log = logging.getLogger("brightrun.adapters")

WORKER_VLLM_IMAGES = ("runpod/worker-v1-vllm", "runpod/worker-vllm")
OWNED_KEYS = ("ENABLE_LORA", "MAX_LORAS", "MAX_LORA_RANK", "LORA_MODULES")
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SECRET_KEY = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.I)
REDACTED = "***"
SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]


class DeployFailed(BrightrunError):
    """The deploy failed; the message says what, and what state the endpoint was left in."""


@dataclass(frozen=True)
class RoutedAdapter:
    """An adapter on the endpoint: its served name, share and where workers read it."""

    artifact: AdapterRow
    served_name: str
    share_percent: int
    rank: int
    base_model: str
    volume_prefix: str  # key prefix on the volume's bucket

    @property
    def path(self) -> str:
        return f"{VOLUME_MOUNT}/{self.volume_prefix}"


@dataclass
class DeployResult:
    deployment_id: str
    endpoint_id: str
    template_id: str
    routes: list[routes_registry.Route]
    env_after: dict[str, str]  # redacted
    timings: dict[str, float] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)
    lifecycle: list[LifecycleResult] = field(default_factory=list)


# ---------------------------------------------------------------- pure planning


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """The env as the registry and logs may hold it: values of secret-looking keys hidden."""
    return {k: (REDACTED if SECRET_KEY.search(k) and v else v) for k, v in env.items()}


def check_template(template: Template, endpoint_id: str) -> None:
    image = template.image_name.split("@")[0]
    if not any(image.startswith(p) for p in WORKER_VLLM_IMAGES):
        raise InputError(
            f"endpoint {endpoint_id} runs template {template.id} with image {template.image_name!r}, not "
            f"RunPod's worker-vllm ({' or '.join(WORKER_VLLM_IMAGES)}): brightrun only deploys LoRA "
            "adapters to worker-vllm endpoints"
        )
    if not template.env.get("MODEL_NAME"):
        raise InputError(
            f"template {template.id} of endpoint {endpoint_id} sets no MODEL_NAME (the base model)"
        )


def plan_env(
    env_before: dict[str, str], adapters: Sequence[RoutedAdapter], *, max_lora_rank: int | None = None
) -> dict[str, str]:
    """The template's new env: every key as before but the four LoRA keys we own."""
    if not adapters:
        raise InputError("nothing to deploy: no adapter is routed")
    base = env_before.get("MODEL_NAME", "")
    for a in adapters:
        if a.base_model != base:
            raise InputError(
                f"adapter {a.served_name} ({a.artifact.id}) was trained on {a.base_model}, but the endpoint "
                f"serves MODEL_NAME={base}: deploy it to an endpoint of its base model"
            )
    current_rank = int(env_before.get("MAX_LORA_RANK") or VLLM_DEFAULT_MAX_LORA_RANK)
    rank = max_lora_rank or current_rank
    if max_lora_rank is not None and max_lora_rank not in VLLM_LORA_RANKS:
        raise InputError(
            f"--max-lora-rank {max_lora_rank}: vLLM accepts {', '.join(map(str, VLLM_LORA_RANKS))}"
        )
    too_big = [a for a in adapters if a.rank > rank]
    if too_big:
        need = min(r for r in VLLM_LORA_RANKS if r >= max(a.rank for a in too_big))
        raise InputError(
            f"adapter {too_big[0].served_name} has LoRA rank {too_big[0].rank}, above the endpoint's "
            f"MAX_LORA_RANK={rank}: vLLM would refuse it and the workers would not start. Raise it with "
            f"--max-lora-rank {need} (vLLM reserves memory for that rank in every LoRA slot)"
        )
    modules = [{"name": a.served_name, "path": a.path, "base_model_name": base} for a in adapters]
    env = dict(env_before)
    env.update(
        ENABLE_LORA="true",
        MAX_LORAS=str(max(len(adapters), int(env_before.get("MAX_LORAS") or 1))),
        MAX_LORA_RANK=str(rank),
        LORA_MODULES=json.dumps(modules, separators=(",", ":")),
    )
    return env


# ---------------------------------------------------------------- edges


def _client(resources: Resources) -> ServerlessClient:
    s = resources.settings
    key = s.runpod_api_key.get_secret_value() if s.runpod_api_key else None
    return serverless_client(
        key, api_base_url=s.runpod_api_base_url, endpoint_base_url=s.runpod_endpoint_base_url
    )


def volume_storage(resources: Resources, volume: NetworkVolume | None, endpoint_id: str) -> S3Storage:
    """The endpoint's network volume through RunPod's S3 API (the bucket is the volume id)."""
    import boto3
    from botocore.config import Config

    s = resources.settings
    if volume is None:
        raise InputError(
            f"endpoint {endpoint_id} has no network volume: attach one in RunPod's console (vLLM reads "
            "adapters from the volume, mounted at /runpod-volume)"
        )
    if s.serving_volume_s3_access_key_id is None or s.serving_volume_s3_secret_access_key is None:
        raise InputError(
            "set BRIGHTRUN_SERVING_VOLUME_S3_ACCESS_KEY_ID and BRIGHTRUN_SERVING_VOLUME_S3_SECRET_ACCESS_KEY "
            "(RunPod console -> Settings -> S3 API Keys) to copy adapters to the endpoint's volume"
        )
    url = s.serving_volume_s3_endpoint_url or volume_s3_url(volume.data_center_id)
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=s.serving_volume_s3_access_key_id.get_secret_value(),
        aws_secret_access_key=s.serving_volume_s3_secret_access_key.get_secret_value(),
        region_name=volume.data_center_id or "us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 4}, s3={"addressing_style": "path"}),
    )
    return S3Storage(volume.id, "", endpoint_url=url, client=client)


def upload_verified(volume: S3Storage, adapter_dir: Any, prefix: str, manifest: Any) -> list[str]:
    """The adapter's files and manifest onto the volume, checked against the manifest after.
    Returns the keys written (empty when a verified copy was already there)."""
    existing = manifest_io.stored_problems(volume, prefix, manifest, read_back=False)
    if not existing and volume.exists(f"{prefix}/{layout.MANIFEST}"):
        return []
    written: list[str] = []
    for rel in [*manifest.files, layout.MANIFEST]:
        key = f"{prefix}/{rel}"
        volume.put_file(key, adapter_dir / rel)
        written.append(key)
    problems = manifest_io.stored_problems(volume, prefix, manifest, read_back=True)
    if problems:
        raise DeployFailed(
            "the adapter copied to the volume does not match its manifest:\n  - " + "\n  - ".join(problems)
        )
    return written


def smoke_test(
    client: ServerlessClient, endpoint_id: str, names: Sequence[str], max_tokens: int
) -> dict[str, str]:
    """One greedy chat completion per served name; each must answer as that name."""
    replies = {}
    for name in names:
        body = client.chat(endpoint_id, name, SMOKE_MESSAGES, max_tokens)
        answered = body.get("model")
        choices = body.get("choices") or []
        text = ((choices[0].get("message") or {}).get("content")) if choices else None
        if answered != name or not isinstance(text, str):
            raise DeployFailed(
                f"smoke test of {name} on endpoint {endpoint_id}: the answer came from {answered!r} "
                f"with {'no text' if text is None else 'text'}; expected model {name!r}"
            )
        replies[name] = text
    return replies


# ---------------------------------------------------------------- the steps

RegistryStep = Callable[[], list[LifecycleResult]]


def _resolve(resources: Resources, routes: Sequence[tuple[str, int]]) -> list[RoutedAdapter]:
    from tasks.adapters.fetch import fetch_adapter

    out = []
    for ref, share in routes:
        art = promotion.resolve_artifact(resources.registry, ref)
        local = fetch_adapter(resources, art)  # verified against its manifest
        config = json.loads((local.directory / "adapter_config.json").read_text())
        out.append(
            RoutedAdapter(
                artifact=art,
                # As `brightrun serve` names it: the served name, else the artifact id.
                served_name=str(art.served_name or art.id),
                share_percent=share,
                rank=int(config.get("r") or 0),
                base_model=local.base_model,
                volume_prefix=f"{resources.settings.serving_volume_prefix.strip('/')}/{art.id}",
            )
        )
    try:
        routes_registry.check_split([(a.served_name, a.artifact.id, a.share_percent) for a in out])
    except ValueError as exc:
        raise InputError(f"the traffic split: {exc}") from None
    return out


def _default_registry_step(
    resources: Resources,
    adapters: Sequence[RoutedAdapter],
    reason: str,
    *,
    force: bool = False,
    dropped: Sequence[str] = (),
) -> RegistryStep:
    """100% → production (the one it replaces archived); a candidate below 100% → testing; a
    `testing` candidate the endpoint no longer serves (`dropped` artifact ids) → archived."""
    engine = resources.registry
    full = [a for a in adapters if a.share_percent == 100]
    seen = {}
    for a in full:
        current = promotion.production_adapter(engine, a.artifact.base_model or "")
        seen[a.artifact.id] = current.id if current else None
        if current is not None and current.id != a.artifact.id and not force:
            evaluation = promotion.latest_evaluation(engine, a.artifact, current.id)
            failure = promotion.gate_failure(a.artifact, current, evaluation)
            if failure:
                raise InputError(f"deploy refused: {failure}; --force --reason TEXT overrides")

    def step() -> list[LifecycleResult]:
        results = []
        for a in adapters:
            if a.share_percent == 100 and a.artifact.deployment_status != DeploymentStatus.production.value:
                results.append(
                    promotion.promote(
                        engine,
                        a.artifact.id,
                        DeploymentStatus.production,
                        force=force,
                        reason=reason,
                        expected_production=seen[a.artifact.id],
                    )
                )
            elif 0 < a.share_percent < 100 and a.artifact.deployment_status == DeploymentStatus.stored.value:
                results.append(
                    promotion.promote(engine, a.artifact.id, DeploymentStatus.testing, reason=reason)
                )
        for artifact_id in dropped:
            if (
                promotion.get_artifact(engine, artifact_id).deployment_status
                == DeploymentStatus.testing.value
            ):
                results.append(promotion.retire_candidate(engine, artifact_id, reason=reason))
        return results

    return step


def apply_routes(
    resources: Resources,
    endpoint_id: str,
    routes: Sequence[tuple[str, int]],
    *,
    reason: str,
    max_lora_rank: int | None = None,
    force: bool = False,
    registry_step: RegistryStep | None = None,
    client: ServerlessClient | None = None,
) -> DeployResult:
    """Serve exactly these (artifact ref or served name, share percent) on the endpoint, all
    or nothing: env, release, smoke test of every served name, then the split and the
    deployment statuses in the registry."""
    started = time.monotonic()
    adapters = _resolve(resources, routes)
    for a in adapters:
        # A rollback (its own registry step) restores an archived one; production stays.
        if registry_step is None and a.share_percent > 0 and a.artifact.deployment_status != "production":
            target = DeploymentStatus.production if a.share_percent == 100 else DeploymentStatus.testing
            promotion.check_promotable(a.artifact, _job_status(resources, a.artifact), target)
    kept = {a.artifact.id for a in adapters}
    dropped = [r.artifact_id for r in live_split(resources, endpoint_id) if r.artifact_id not in kept]
    step = registry_step or _default_registry_step(resources, adapters, reason, force=force, dropped=dropped)
    own_client = client is None
    client = client or _client(resources)
    try:
        return _apply(resources, client, endpoint_id, adapters, reason, max_lora_rank, step, started)
    finally:
        if own_client:
            client.close()


def _job_status(resources: Resources, artifact: AdapterRow) -> str:
    from brightrun.registry import repository as repo

    return repo.get_job(resources.registry, artifact.training_job_id).status


def _apply(
    resources: Resources,
    client: ServerlessClient,
    endpoint_id: str,
    adapters: list[RoutedAdapter],
    reason: str,
    max_lora_rank: int | None,
    step: RegistryStep,
    started: float,
) -> DeployResult:
    from tasks.adapters.fetch import fetch_adapter

    s = resources.settings
    engine = resources.registry
    endpoint, template, volume = client.endpoint_and_template(endpoint_id)
    check_template(template, endpoint_id)
    env_before = dict(template.env)
    env_after = plan_env(env_before, adapters, max_lora_rank=max_lora_rank)
    storage = volume_storage(resources, volume, endpoint_id)
    names = [a.served_name for a in adapters]
    deployment_id = deployments.begin(
        engine,
        endpoint_id,
        template_id=template.id,
        env_before=redact_env(env_before),
        env_after=redact_env(env_after),
        served_names=names,
        artifact_ids=[a.artifact.id for a in adapters],
        reason=reason,
        lease_seconds=s.serving_lease_seconds,
    )
    timings: dict[str, float] = {}
    uploaded: list[str] = []
    env_sent = False
    try:
        t = time.monotonic()
        for a in adapters:
            local = fetch_adapter(resources, a.artifact)
            try:
                uploaded += upload_verified(storage, local.directory, a.volume_prefix, local.manifest)
            except DeployFailed:
                raise
            except Exception as exc:
                raise DeployFailed(
                    f"copying {a.served_name} to network volume {volume.id if volume else '?'} through "
                    f"{storage.endpoint_url} failed: {exc}. Check BRIGHTRUN_SERVING_VOLUME_S3_* "
                    "(the volume's S3 API keys) and BRIGHTRUN_SERVING_VOLUME_S3_ENDPOINT_URL"
                ) from None
        timings["upload_s"] = time.monotonic() - t
        t = time.monotonic()
        env_sent = True  # from here the save may have reached RunPod even if it answers an error
        client.save_template_env(template, env_after)
        client.wait_for_release(endpoint_id, names, timeout_s=s.serving_release_timeout_seconds)
        timings["release_s"] = time.monotonic() - t
        t = time.monotonic()
        replies = smoke_test(client, endpoint_id, names, s.serving_smoke_max_tokens)
        timings["smoke_s"] = time.monotonic() - t
        lifecycle = step()
        with engine.begin() as conn:
            with Session(bind=conn) as session:
                opened = routes_registry.open_split(
                    session, endpoint_id, [(a.served_name, a.artifact.id, a.share_percent) for a in adapters]
                )
                session.flush()
            deployments.supersede_live(conn, endpoint_id, keep=deployment_id)
            deployments.finish(conn, deployment_id, deployments.Status.live)
    except BaseException as exc:
        restored = _undo(client, template, env_before, endpoint_id, storage, uploaded, env_sent, s)
        status = deployments.Status.restored if env_sent else deployments.Status.failed
        message = f"deploy to endpoint {endpoint_id} failed: {exc}. {restored}"
        with engine.begin() as conn:
            deployments.finish(conn, deployment_id, status, error=message)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise DeployFailed(message) from exc
    timings["total_s"] = time.monotonic() - started
    log.info("deployed %s to endpoint %s in %.1f s", names, endpoint_id, timings["total_s"])
    return DeployResult(
        deployment_id, endpoint_id, template.id, opened, redact_env(env_after), timings, replies, lifecycle
    )


def _undo(
    client: ServerlessClient,
    template: Template,
    env_before: dict[str, str],
    endpoint_id: str,
    storage: S3Storage,
    uploaded: list[str],
    env_sent: bool,
    settings: Any,
) -> str:
    """Put the env before back (and wait for it), remove what was uploaded; say what happened."""
    said = []
    if env_sent:
        try:
            client.save_template_env(template, env_before)
            before = json.loads(env_before.get("LORA_MODULES") or "[]")
            client.wait_for_release(
                endpoint_id, [m["name"] for m in before], timeout_s=settings.serving_release_timeout_seconds
            )
            said.append("The endpoint's env before the deploy was restored and its workers serve it again.")
        except Exception as exc:  # the operator must know the endpoint is not as it was
            said.append(
                f"RESTORING THE ENDPOINT'S ENV FAILED ({exc}): template {template.id} may still hold the new "
                "env; the env before is recorded in the registry (endpoint_deployments.env_before)."
            )
    else:
        said.append("The endpoint was not changed.")
    for key in uploaded:
        try:
            storage.delete(key)
        except Exception as exc:
            said.append(f"Could not remove {key} from the volume: {exc}.")
    return " ".join(said)


# ---------------------------------------------------------------- deploy, rollback


def live_split(resources: Resources, endpoint_id: str) -> list[routes_registry.Route]:
    with Session(resources.registry) as session:
        return routes_registry.live_routes(session, endpoint_id)


def deploy(
    resources: Resources,
    ref: str,
    endpoint_id: str,
    *,
    share: int | None = None,
    reason: str | None = None,
    force: bool = False,
    max_lora_rank: int | None = None,
) -> DeployResult:
    """`brightrun deploy`: the adapter alone (100%), or beside production with `share` percent."""
    if share is None or share == 100:
        return apply_routes(
            resources,
            endpoint_id,
            [(ref, 100)],
            reason=reason or f"deploy to endpoint {endpoint_id}",
            force=force,
            max_lora_rank=max_lora_rank,
        )
    if not 1 <= share <= 99:
        raise InputError(f"--share {share}: give the candidate's percent of traffic, 1 to 99 (or 100 alone)")
    candidate = promotion.resolve_artifact(resources.registry, ref)
    live = live_split(resources, endpoint_id)
    others = [r for r in live if r.artifact_id != candidate.id]
    if others:
        production_ref = others[0].artifact_id
    else:
        current = promotion.production_adapter(resources.registry, candidate.base_model or "")
        if current is None or current.id == candidate.id:
            raise InputError(
                f"--share needs a production adapter to split with; endpoint {endpoint_id} has no live route "
                "and the registry no other production adapter: deploy one at 100% first"
            )
        production_ref = current.id
    return apply_routes(
        resources,
        endpoint_id,
        [(production_ref, 100 - share), (candidate.id, share)],
        reason=reason or f"A/B on endpoint {endpoint_id}: {share}% to {ref}",
        max_lora_rank=max_lora_rank,
    )


def rollback(
    resources: Resources,
    endpoint_id: str,
    base_model: str | None = None,
    *,
    reason: str | None = None,
    max_lora_rank: int | None = None,
) -> DeployResult:
    """Re-point the endpoint to the previous production adapter (smoke-tested), then archive
    the rolled-back one in the registry."""
    engine = resources.registry
    if base_model is None:
        models = sorted({a.base_model or "" for a in promotion.production_adapters(engine)})
        if len(models) != 1:
            raise InputError(
                "no adapter is in production" if not models else "several base models: give --base-model",
                models,
            )
        base_model = models[0]
    current = promotion.production_adapter(engine, base_model)
    if current is None:
        raise InputError(f"no adapter of {base_model} is in production; there is nothing to roll back")
    with engine.connect() as conn:
        # The one promotion.rollback restores (it checks again under its lock).
        previous = promotion._previous_production(conn, base_model, exclude=current.id)
    if previous is None:
        raise InputError(f"{current.id} is the first production adapter of {base_model}: nothing to restore")
    why = reason or f"rollback on endpoint {endpoint_id}"

    def step() -> list[LifecycleResult]:
        result = promotion.rollback(engine, base_model, reason=why)
        if result.artifact.id != previous.id:
            raise DeployFailed(
                f"the registry restored {result.artifact.id}, not {previous.id}: the production adapter "
                "changed during the rollback"
            )
        return [result]

    return apply_routes(
        resources,
        endpoint_id,
        [(previous.id, 100)],
        reason=why,
        max_lora_rank=max_lora_rank,
        registry_step=step,
    )
