"""`prefect deploy` on a machine without a Docker engine (issue 21): `--all` registers every other
deployment and skips `docker` with a message, exit 0; asking for `docker` by name fails with
that message; nothing is pip-installed. A DOCKER_HOST where nothing listens stands in for
this machine's (the test must not depend on whether the CI box has Docker)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")
NO_ENGINE = "tcp://127.0.0.1:9"  # the discard port: nothing listens


def _deploy(args: list[str], api_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_CLI_PROMPT": "false", "DOCKER_HOST": NO_ENGINE}
    return subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _deployment_names(api_url: str) -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {d.name for d in client.read_deployments()}


def test_deploy_all_skips_docker_with_a_message(prefect_harness: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, kind in (("brightrun-process", "process"), ("brightrun-docker", "docker")):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=name, type=kind))
        # The harness is the session's: test_deployments.py may have deployed docker (a fake engine).
        with contextlib.suppress(ObjectNotFound):
            client.delete_deployment(client.read_deployment_by_name("train_adapter/docker").id)
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["deployments"][-1]["name"] == "docker"  # every other one is registered first
    pip_before = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout

    by_name = _deploy(["-n", "train_adapter/docker"], prefect_harness)
    assert by_name.returncode == 1, by_name.stdout[-3000:] + by_name.stderr[-3000:]
    assert "Cannot deploy train_adapter/docker here: the Docker engine does not answer" in by_name.stdout
    assert "docker" not in _deployment_names(prefect_harness)

    everything = _deploy(["--all"], prefect_harness)
    out = everything.stdout + everything.stderr
    assert everything.returncode == 0, out[-3000:]
    assert "Skipping the `docker` deployment: the Docker engine does not answer" in out
    assert "Traceback" not in out
    names = _deployment_names(prefect_harness)
    assert {d["name"] for d in config["deployments"]} - names == {"docker"}, names
    # `prefect deploy` honours prefect.yaml's setting, which test_deployment_bad_params.py mirrors.
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("train_adapter/local").enforce_parameter_schema is False
    pip_after = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert pip_after == pip_before
