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


def test_deploy_all_skips_docker_with_a_message(prefect_harness: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name, kind in (("brightrun-process", "process"), ("brightrun-docker", "docker")):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=name, type=kind))
    # prefect.yaml's training deployments as written (--all of the whole file registers eight
    # deployments, a minute here; the two that matter are the local one and docker, last).
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    config["deployments"] = [d for d in config["deployments"] if d["name"] in ("local", "docker")]
    assert config["deployments"][-1]["name"] == "docker"
    trimmed = tmp_path / "prefect.yaml"
    trimmed.write_text(yaml.safe_dump(config))
    pip_before = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout

    by_name = _deploy(["--prefect-file", str(trimmed), "-n", "train_adapter/docker"], prefect_harness)
    assert by_name.returncode == 1, by_name.stdout[-3000:] + by_name.stderr[-3000:]
    assert "Cannot deploy train_adapter/docker here: the Docker engine does not answer" in by_name.stdout
    assert "docker" not in _deployment_names(prefect_harness)

    everything = _deploy(["--prefect-file", str(trimmed), "--all"], prefect_harness)
    out = everything.stdout + everything.stderr
    assert everything.returncode == 0, out[-3000:]
    assert "Skipping the `docker` deployment: the Docker engine does not answer" in out
    assert "Traceback" not in out
    names = _deployment_names(prefect_harness)
    assert "local" in names and "docker" not in names
    pip_after = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert pip_after == pip_before
