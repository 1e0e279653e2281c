"""prefect.yaml registers every deployment, with its schedules, against a real Prefect API."""

from __future__ import annotations

import importlib.util

import httpx
import pytest
import yaml

from deployments.register import REPO, load_config, register_all

pytestmark = pytest.mark.integration
PREFECT_YAML = REPO / "prefect.yaml"


def _missing_entrypoints() -> list[str]:
    missing = []
    for spec in load_config(PREFECT_YAML)["deployments"]:
        module = spec["entrypoint"].split(":", 1)[0]
        if not (REPO / module).exists():
            missing.append(module)
    return missing


def test_prefect_yaml_declares_what_the_product_needs() -> None:
    config = yaml.safe_load(PREFECT_YAML.read_text())
    by_entry = {}
    for spec in config["deployments"]:
        by_entry.setdefault(spec["entrypoint"], []).append(spec)
    train = by_entry["flows/train_adapter.py:train_adapter"]
    assert {d["work_pool"]["name"] for d in train} == {"brightrun-process", "brightrun-docker"}
    assert all(d["concurrency_limit"]["limit"] == 1 for d in train)
    assert by_entry["flows/export_feedback.py:export_feedback"][0]["schedules"][0]["cron"]
    assert by_entry["flows/reap_pods.py:reap_pods"][0]["schedules"][0]["interval"] > 0


def test_every_deployment_registers_with_its_schedules(
    prefect_harness: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = _missing_entrypoints()
    if missing:
        pytest.skip(f"flow modules not in this build yet: {missing}")
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("BRIGHTRUN_REPO", str(REPO))
    registered = register_all(PREFECT_YAML)
    assert set(registered) == {
        "train_adapter/local",
        "train_adapter/docker",
        "export_feedback/daily",
        "reap_pods/every-5-minutes",
    }
    with get_client(sync_client=True) as client:
        local = client.read_deployment(registered["train_adapter/local"])
        docker = client.read_deployment(registered["train_adapter/docker"])
        export = client.read_deployment(registered["export_feedback/daily"])
        reap = client.read_deployment(registered["reap_pods/every-5-minutes"])
    # Raw API: this Prefect client's read_work_pools posts `limit: null`, which its server rejects.
    found = httpx.post(f"{prefect_harness}/work_pools/filter", json={"limit": 100}, timeout=10).json()
    pools = {p["name"]: p["type"] for p in found}
    assert pools["brightrun-process"] == "process" and pools["brightrun-docker"] == "docker"
    assert local.work_pool_name == "brightrun-process"
    assert local.global_concurrency_limit is not None and local.global_concurrency_limit.limit == 1
    assert local.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    assert docker.work_pool_name == "brightrun-docker"
    assert docker.job_variables["image"].startswith("ghcr.io/brightrun/flow")
    assert (
        docker.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
        == "/opt/brightrun"
    )
    # The UI renders the form from this schema: the typed parameters must be in it.
    props = local.parameter_openapi_schema["properties"]
    assert {"dataset", "base_model", "preset", "hyperparameters", "provisioning", "webhook_url"} <= set(props)
    assert local.parameters["preset"] == "balanced"
    assert [s.schedule.cron for s in export.schedules] == ["0 3 * * *"]
    assert [s.schedule.interval.total_seconds() for s in reap.schedules] == [300.0]
    assert not local.schedules


def test_serve_builds_the_same_flows() -> None:
    from deployments.serve import build_deployments

    names = {d.name for d in build_deployments(include_scheduled=False)}
    assert names == {"serve"}
    assert importlib.util.find_spec("flows.train_adapter") is not None
