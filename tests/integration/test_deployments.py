"""`prefect deploy --all` registers every deployment of prefect.yaml against a real Prefect server.

The `docker` deployment builds and pushes the flow image through prefect-docker's steps; no
container engine runs here, so those steps talk to a fake Docker Engine API
(tests/fixtures/docker_api.py), which records the build it was asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
PREFECT = Path(sys.executable).with_name("prefect")


def test_prefect_yaml_declares_what_the_product_needs() -> None:
    config = yaml.safe_load(PREFECT_YAML.read_text())
    by_entry: dict[str, list[dict]] = {}
    for spec in config["deployments"]:
        by_entry.setdefault(spec["entrypoint"], []).append(spec)
        module = spec["entrypoint"].split(":", 1)[0]
        assert (REPO / module).is_file(), f"{spec['name']}: {module} does not exist"
    train = by_entry["flows/train_adapter.py:train_adapter"]
    assert {d["work_pool"]["name"] for d in train} == {"brightrun-process", "brightrun-docker"}
    assert all(d["concurrency_limit"]["limit"] == 1 for d in train)
    assert by_entry["flows/export_feedback.py:export_feedback"][0]["schedules"][0]["cron"]
    assert by_entry["flows/reap_pods.py:reap_pods"][0]["schedules"][0]["interval"] > 0
    decide = by_entry["flows/decide_ab.py:decide_ab"][0]
    assert decide["schedules"][0]["cron"] == "0 * * * *" and "endpoint_id" in decide["parameters"]


def test_the_docker_steps_resolve() -> None:
    """Each step prefect.yaml names imports (prefect-docker is installed with the `docker` extra)."""
    from prefect.utilities.importtools import import_object

    config = yaml.safe_load(PREFECT_YAML.read_text())
    steps = [
        step
        for spec in config["deployments"]
        for section in ("build", "push", "pull")
        for step in (spec.get(section) or [])
    ]
    names = {name for step in steps for name in step}
    assert "prefect_docker.deployments.steps.build_docker_image" in names
    assert "prefect_docker.deployments.steps.push_docker_image" in names
    for name in names:
        assert callable(import_object(name)), name


def test_prefect_deploy_all_creates_every_deployment(
    prefect_harness: str, fake_docker: object, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        for name, kind in (("brightrun-process", "process"), ("brightrun-docker", "docker")):
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type=kind))
            except Exception as exc:  # already there from an earlier test in this session
                if "already exists" not in str(exc):
                    raise
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_CLI_PROMPT": "false",
    }
    env.pop("BRIGHTRUN_REPO", None)  # the README's setup names no such variable
    done = subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with get_client(sync_client=True) as client:
        local = client.read_deployment_by_name("train_adapter/local")
        docker = client.read_deployment_by_name("train_adapter/docker")
        export = client.read_deployment_by_name("export_feedback/daily")
        reap = client.read_deployment_by_name("reap_pods/every-5-minutes")
        evaluate = client.read_deployment_by_name("evaluate_adapter/on-demand")
        promote = client.read_deployment_by_name("promote_adapter/on-demand")
        pools = {p.name: p.type for p in client.read_work_pools()}
    assert pools["brightrun-process"] == "process" and pools["brightrun-docker"] == "docker"
    assert local.work_pool_name == evaluate.work_pool_name == promote.work_pool_name == "brightrun-process"
    assert local.global_concurrency_limit is not None and local.global_concurrency_limit.limit == 1
    assert local.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    assert docker.work_pool_name == "brightrun-docker"
    assert docker.job_variables["image"] == "ghcr.io/brightrun/flow:latest"
    assert (
        docker.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
        == "/opt/brightrun"
    )
    # The image was built from the flow Dockerfile with the repository as context, then pushed.
    (build,) = fake_docker.builds  # type: ignore[attr-defined]
    assert build["query"]["dockerfile"] == "infra/Dockerfile.flow"
    assert "flows/train_adapter.py" in build["files"] and "prefect.yaml" in build["files"]
    assert "COPY flows ./flows" in build["dockerfile"]
    assert ("ghcr.io/brightrun/flow", "latest") in fake_docker.pushes  # type: ignore[attr-defined]
    # The UI renders the form from this schema: the typed parameters must be in it.
    props = local.parameter_openapi_schema["properties"]
    assert {"dataset", "base_model", "preset", "training", "lora", "provisioning", "webhook_url"} <= set(
        props
    )
    assert local.parameters["preset"] == "balanced"
    assert [s.schedule.cron for s in export.schedules] == ["0 3 * * *"]
    assert [s.schedule.interval.total_seconds() for s in reap.schedules] == [300.0]
    assert not local.schedules


def test_serve_builds_the_same_flows() -> None:
    from deployments.serve import build_deployments

    names = {d.name for d in build_deployments(include_scheduled=True)}
    assert names == {"serve", "on-demand", "daily", "every-5-minutes"}
    assert len(build_deployments(include_scheduled=False)) == 3
