"""Deploy to a worker-vllm endpoint on the fake RunPod (issue 24): train → deploy → the
endpoint answers with the adapter → rollback restores the previous one; and the faults.

Real parts: the adapters are trained by the real trainer (the `trained` fixture of
test_adapters), the endpoint's network volume is a SeaweedFS bucket reached through its S3
API, the fake's workers run our OpenAI-compatible server configured from worker-vllm's env.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from brightrun.compute.runpod_client import GraphQLRunPodClient
from brightrun.compute.runpod_serverless import ServerlessClient
from brightrun.errors import InputError
from brightrun.registry import endpoint_deployments as deployments
from brightrun.registry import promotion as pm
from brightrun.registry.routes import live_routes
from brightrun.resources import Resources
from tasks.adapters import deploy as dp
from tests.fake_runpod.serverless import VolumeStore
from tests.integration.test_adapters import PROMPT, SYSTEM, Trained, cli, trained  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HF_SECRET = "hf_secret_token_value_123"
VOLUME = "vol0dep1"


@dataclass
class Endpoint:
    id: str
    template_id: str
    fake: Any
    resources: Resources

    def template_env(self) -> dict[str, str]:
        return dict(self.fake.serverless.templates[self.template_id]["env"])

    def chat(self, model: str, max_tokens: int = 12) -> dict[str, Any]:
        response = httpx.post(
            f"{self.fake.url}/v2/{self.id}/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.fake.api_key}"},
            json={
                "model": model,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def endpoint(
    trained: Trained,  # noqa: F811
    fake_runpod: Any,
    seaweed: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Endpoint]:
    s3 = seaweed.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=VOLUME)
    fake = fake_runpod.fake
    fake.serverless.store = VolumeStore(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    fake.serverless.add_volume(VOLUME, "EU-RO-1")
    template = fake.serverless.add_template(
        {"MODEL_NAME": str(trained.base_model), "QUANTIZATION": "bitsandbytes", "HF_TOKEN": HF_SECRET}
    )
    eid = fake.serverless.add_endpoint(template, network_volume_id=VOLUME, start=False)
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", f"{fake_runpod.url}/v2")
    monkeypatch.setenv("BRIGHTRUN_SERVING_VOLUME_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("BRIGHTRUN_SERVING_VOLUME_S3_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("BRIGHTRUN_SERVING_VOLUME_S3_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("BRIGHTRUN_SERVING_RELEASE_TIMEOUT_SECONDS", "180")
    resources = Resources.from_settings()
    try:
        yield Endpoint(eid, template, fake, resources)
    finally:
        resources.close()
        for obj in s3.list_objects_v2(Bucket=VOLUME).get("Contents", []):
            s3.delete_object(Bucket=VOLUME, Key=obj["Key"])


def _record_timings(what: str, result: dp.DeployResult) -> None:
    """For benchmarks/bench_deploy.py (only when it asks)."""
    path = os.environ.get("BRIGHTRUN_DEPLOY_TIMINGS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"what": what, **result.timings}) + "\n")


def _status(resources: Resources, art: pm.AdapterRow) -> pm.AdapterRow:
    return pm.get_artifact(resources.registry, art.id)


def _generate_text(art: pm.AdapterRow) -> str:
    code, out = cli(
        "generate", art.id, "--prompt", PROMPT, "--system", SYSTEM, "--max-new-tokens", "12", "--json"
    )
    assert code == 0, out
    return str(json.loads(out)["text"])


def test_deploy_then_rollback_on_the_endpoint(endpoint: Endpoint, trained: Trained) -> None:  # noqa: F811
    r = endpoint.resources
    strong, weak = trained.strong, trained.weak
    first = dp.deploy(r, strong.id, endpoint.id, force=True, reason="first deploy")
    _record_timings("first", first)
    strong_name = str(strong.served_name)
    assert [(x.served_name, x.share_percent) for x in first.routes] == [(strong_name, 100)]
    row = _status(r, strong)
    assert row.deployment_status == "production" and row.deployed_at is not None
    # The endpoint answers as the adapter, with the tokens the adapter's own generate gives.
    reply = endpoint.chat(strong_name)
    assert reply["model"] == strong_name
    assert reply["choices"][0]["message"]["content"] == _generate_text(strong)
    env = endpoint.template_env()
    assert env["HF_TOKEN"] == HF_SECRET and env["QUANTIZATION"] == "bitsandbytes"  # kept as it was
    assert json.loads(env["LORA_MODULES"]) == [
        {
            "name": strong_name,
            "path": f"/runpod-volume/brightrun/adapters/{strong.id}",
            "base_model_name": str(trained.base_model),
        }
    ]
    recorded = deployments.deployments(r.registry, endpoint.id)
    assert recorded[0]["status"] == "live" and recorded[0]["served_names"] == [strong_name]
    assert HF_SECRET not in json.dumps(recorded, default=str)  # redacted in the registry

    # The smoke test failing after the env changed: the env before comes back, registry unchanged.
    env_before = endpoint.template_env()
    endpoint.fake.serverless.fail_openai(count=1)
    with pytest.raises(dp.DeployFailed, match="restored"):
        dp.deploy(r, weak.id, endpoint.id, force=True, reason="smoke fails")
    assert endpoint.template_env() == env_before
    assert _status(r, strong).deployment_status == "production"
    assert endpoint.chat(strong_name)["model"] == strong_name
    assert deployments.deployments(r.registry, endpoint.id)[0]["status"] == "restored"

    second = dp.deploy(r, weak.id, endpoint.id, force=True, reason="ship weak")
    _record_timings("second", second)
    assert second.routes[0].served_name == weak.served_name
    assert _status(r, strong).deployment_status == "archived"
    assert endpoint.chat(str(weak.served_name))["model"] == weak.served_name

    back = dp.rollback(r, endpoint.id, reason="weak is worse")
    _record_timings("rollback", back)
    assert [x.served_name for x in back.routes] == [strong_name]
    assert _status(r, strong).deployment_status == "production"
    assert _status(r, weak).deployment_status == "archived"
    assert endpoint.chat(strong_name)["choices"][0]["message"]["content"] == _generate_text(strong)
    with Session(r.registry) as session:
        assert [x.served_name for x in live_routes(session, endpoint.id)] == [strong_name]
    statuses = [d["status"] for d in deployments.deployments(r.registry, endpoint.id)]
    assert statuses == ["live", "superseded", "restored", "superseded"]


def _assert_untouched(endpoint: Endpoint, env_before: dict[str, str], releases: int) -> None:
    assert endpoint.template_env() == env_before
    assert len(endpoint.fake.serverless.releases) == releases
    with Session(endpoint.resources.registry) as session:
        assert live_routes(session, endpoint.id) == []


def test_bad_input_and_faults_leave_the_endpoint_as_it_was(
    endpoint: Endpoint,
    trained: Trained,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = endpoint.resources
    env_before = endpoint.template_env()
    status_before = _status(r, trained.strong).deployment_status
    with pytest.raises(InputError, match="not in this account"):
        dp.deploy(r, trained.strong.id, "nosuchendpoint", force=True, reason="x")
    # A template that is not worker-vllm.
    other = endpoint.fake.serverless.add_template(
        {"MODEL_NAME": str(trained.base_model)}, image="me/my-server:1"
    )
    eid = endpoint.fake.serverless.add_endpoint(other, network_volume_id=VOLUME, start=False)
    with pytest.raises(InputError, match="not RunPod's worker-vllm"):
        dp.deploy(r, trained.strong.id, eid, force=True, reason="x")
    # A base-model mismatch names both.
    llama = endpoint.fake.serverless.add_template({"MODEL_NAME": "meta-llama/Meta-Llama-3-8B-Instruct"})
    eid = endpoint.fake.serverless.add_endpoint(llama, network_volume_id=VOLUME, start=False)
    with pytest.raises(InputError, match=rf"trained on {trained.base_model}.*Meta-Llama-3-8B-Instruct"):
        dp.deploy(r, trained.strong.id, eid, force=True, reason="x")
    _assert_untouched(endpoint, env_before, 0)

    # Wrong volume keys: refused before the env changes, nothing on the volume.
    monkeypatch.setenv("BRIGHTRUN_SERVING_VOLUME_S3_SECRET_ACCESS_KEY", "wrong-secret")
    bad = Resources.from_settings()
    try:
        with pytest.raises(dp.DeployFailed, match="BRIGHTRUN_SERVING_VOLUME_S3_"):
            dp.deploy(bad, trained.strong.id, endpoint.id, force=True, reason="x")
    finally:
        bad.close()
    _assert_untouched(endpoint, env_before, 0)
    assert deployments.deployments(r.registry, endpoint.id)[0]["status"] == "failed"

    # The API failing after the upload: saveTemplate answers 500 past the client's retries.
    graphql = GraphQLRunPodClient(
        endpoint.fake.api_key, base_url=endpoint.fake.url, max_attempts=2, backoff_seconds=0.6
    )
    fake = endpoint.fake

    class FailingAtTheSave(ServerlessClient):
        """The outage starts when the deploy saves the template (after the upload)."""

        outages = 0

        def save_template_env(self, template: Any, env: dict[str, str]) -> None:
            if not self.outages:
                self.outages += 1
                fake.fail_for(0.9, status=500, operations=["saveTemplate"])
            super().save_template_env(template, env)

    client = FailingAtTheSave(graphql, fake.api_key, endpoint_base_url=f"{fake.url}/v2")
    with pytest.raises(dp.DeployFailed, match="was restored"):
        dp.apply_routes(r, endpoint.id, [(trained.strong.id, 100)], reason="x", force=True, client=client)
    client.close()
    assert endpoint.template_env() == env_before
    assert _status(r, trained.strong).deployment_status == status_before
    s3 = endpoint.fake.serverless.store
    assert s3 is not None
    # What this deploy uploaded is gone again.
    import boto3

    objects = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
    ).list_objects_v2(Bucket=VOLUME)
    assert objects.get("KeyCount", 0) == 0


def test_two_deploys_at_once_one_is_refused(endpoint: Endpoint) -> None:
    engine = endpoint.resources.registry
    kwargs: dict[str, Any] = dict(
        template_id="t", env_before={}, env_after={}, served_names=["a"], artifact_ids=[], reason=None
    )
    first = deployments.begin(engine, "ep-lock", lease_seconds=60, **kwargs)
    with pytest.raises(deployments.DeployInProgress, match="another deploy to endpoint ep-lock"):
        deployments.begin(engine, "ep-lock", lease_seconds=60, **kwargs)
    with engine.begin() as conn:
        deployments.finish(conn, first, deployments.Status.live)
    # An expired lease (its deploy died) is taken over.
    deployments.begin(engine, "ep-lock", lease_seconds=0.01, **kwargs)
    time.sleep(0.05)
    deployments.begin(engine, "ep-lock", lease_seconds=60, **kwargs)
    assert [d["status"] for d in deployments.deployments(engine, "ep-lock")][:2] == ["deploying", "failed"]


def test_fake_worker_refuses_what_vllm_refuses(tmp_path: Path) -> None:
    from tests.fake_runpod.vllm_worker import WorkerStartError, check_env

    modules = json.dumps([{"name": "a", "path": "/x"}, {"name": "b", "path": "/y"}])
    env = {"MODEL_NAME": "m", "ENABLE_LORA": "true", "LORA_MODULES": modules, "MAX_LORAS": "2"}
    check_env(env, {"a": 16, "b": 8})
    with pytest.raises(WorkerStartError, match="LoRA rank 32 is greater than max_lora_rank 16"):
        check_env(env, {"a": 32, "b": 8})
    with pytest.raises(WorkerStartError, match="MAX_LORAS=1"):
        check_env({**env, "MAX_LORAS": "1"}, {})
    with pytest.raises(WorkerStartError, match="ENABLE_LORA"):
        check_env({**env, "ENABLE_LORA": "false"}, {})


def test_routes_open_a_split_and_end_it(endpoint: Endpoint, trained: Trained) -> None:  # noqa: F811
    from brightrun.registry.routes import end_routes, open_split

    strong, weak = trained.strong, trained.weak
    with Session(endpoint.resources.registry) as session:
        with pytest.raises(ValueError, match="sum to 90"):
            open_split(session, "ep-ab", [("a", strong.id, 80), ("b", weak.id, 10)])
        opened = open_split(session, "ep-ab", [("b", weak.id, 10), ("a", strong.id, 90)])
        assert [(r.served_name, r.share_percent) for r in opened] == [("a", 90), ("b", 10)]
        session.commit()
        assert [r.served_name for r in live_routes(session, "ep-ab")] == ["a", "b"]
        open_split(session, "ep-ab", [("a", strong.id, 100)])
        session.commit()
        assert [(r.served_name, r.share_percent) for r in live_routes(session, "ep-ab")] == [("a", 100)]
        view = session.execute(
            sa.text("SELECT served_name, share_percent FROM serving_routes_live WHERE endpoint_id = 'ep-ab'")
        ).all()
        assert [tuple(v) for v in view] == [("a", 100)]
        assert end_routes(session, "ep-ab") == 1
        session.commit()
        assert live_routes(session, "ep-ab") == []


def test_ab_on_the_endpoint_promotes_a_better_candidate_and_rolls_back_a_worse_one(
    endpoint: Endpoint,
    trained: Trained,  # noqa: F811
) -> None:
    """The loop of issue 24 on the fake: production alone → a candidate at 10 % beside it (two
    LORA_MODULES) → users, each sticky to one arm by the app's hash, rate the answers → the
    decision re-points the endpoint (real `apply_routes`: release, smoke test, registry)."""
    from brightrun.ab import ABRule, pick_served_name
    from tasks.ab.decide import run_decision
    from tests.ab_helpers import simulate_users

    r = endpoint.resources
    # Fresh adapters (the module's own may be production or archived by the tests before):
    # copies of the trained ones under new jobs. The thumbs are simulated, so which is which
    # only matters for what the endpoint must serve.
    weak = _copy_adapter(r, trained, trained.weak, "ab-weak")
    strong = _copy_adapter(r, trained, trained.strong, "ab-strong")
    worse = _copy_adapter(r, trained, trained.weak, "ab-worse")
    dp.deploy(r, weak.id, endpoint.id, force=True, reason="production first")
    split = dp.deploy(r, strong.id, endpoint.id, share=10, reason="try the candidate on 10 %")
    assert sorted((x.served_name, x.share_percent) for x in split.routes) == sorted(
        [(str(weak.served_name), 90), (str(strong.served_name), 10)]
    )
    assert len(json.loads(endpoint.template_env()["LORA_MODULES"])) == 2
    assert int(endpoint.template_env()["MAX_LORAS"]) >= 2
    assert _status(r, strong).deployment_status == "testing"
    shares = [(x.served_name, x.share_percent) for x in split.routes]
    for user in ("user-1", "user-7", "user-42"):  # the app picks `model` per user; the endpoint answers as it
        picked = pick_served_name(user, shares)
        assert endpoint.chat(picked, max_tokens=4)["model"] == picked

    rule = ABRule(min_rated_per_arm=60, early_stop_min_rated=30)
    now = datetime.now(UTC)
    rates = {str(weak.served_name): 0.45, str(strong.served_name): 0.9}
    simulate_users(r.registry, rates, users=1200, start=now, endpoint_id=endpoint.id)
    promoted = run_decision(r, endpoint.id, rule)
    assert promoted.decision.action.value == "promote" and promoted.applied
    assert _status(r, strong).deployment_status == "production"
    assert _status(r, weak).deployment_status == "archived"
    assert [m["name"] for m in json.loads(endpoint.template_env()["LORA_MODULES"])] == [strong.served_name]
    assert endpoint.chat(str(strong.served_name), max_tokens=4)["model"] == strong.served_name

    # A worse candidate beside the new production is stopped early and dropped from the endpoint.
    dp.deploy(r, worse.id, endpoint.id, share=10, reason="try another candidate")
    later = datetime.now(UTC) + timedelta(seconds=1)
    simulate_users(
        r.registry,
        {str(weak.served_name): 0.1, str(strong.served_name): 0.8},
        users=600,
        start=later,
        seed=7,
        endpoint_id=endpoint.id,
    )
    stopped = run_decision(r, endpoint.id, rule, since=later)
    assert stopped.decision.action.value == "roll_back" and "early" in stopped.decision.reason
    assert _status(r, strong).deployment_status == "production"
    assert _status(r, worse).deployment_status == "archived"
    with Session(r.registry) as session:
        assert [(x.served_name, x.share_percent) for x in live_routes(session, endpoint.id)] == [
            (str(strong.served_name), 100)
        ]
    assert [m["name"] for m in json.loads(endpoint.template_env()["LORA_MODULES"])] == [strong.served_name]


def _copy_adapter(resources: Resources, trained: Trained, art: pm.AdapterRow, name: str) -> pm.AdapterRow:  # noqa: F811
    """A new completed job holding a copy of `art`'s trained files, registered as its adapter."""
    import shutil

    from brightrun import layout
    from brightrun.registry import repository as repo
    from tasks.adapters.task import publish_adapter

    engine = resources.registry
    job = repo.create_job(engine, job_name=name, base_model=str(trained.base_model))
    for step in ("preprocessing", "model_loaded", "training", "completed"):
        repo.transition_job(engine, job.id, step)
    root = trained.storage.root
    source, target = layout.JobLayout(art.training_job_id).prefix, layout.JobLayout(job.id).prefix
    shutil.copytree(root / source, root / target)
    copy = publish_adapter.fn(engine, trained.storage, job.id, base_model=str(trained.base_model))
    return pm.get_artifact(engine, copy.id)
