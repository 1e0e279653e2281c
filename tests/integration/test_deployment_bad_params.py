"""A deployment run of `train_adapter` with bad parameters fails with one message listing every
problem, as the CLI does (issue 21): through a real Prefect server, the deployment registered
as `prefect deploy` registers it, and the run executed as a worker executes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")

BAD = {
    "dataset": "examples/brightrun-sample.json",
    "base_model": "meta-llama/Meta-Llama-3-8B-Instruct",
    "training": {"max_steps": -3, "learning_rate": "fast"},
    "lora": {"r": 0},
}


def test_bad_parameters_fail_the_run_listing_every_problem(
    prefect_harness: str, brightrun_home: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.train_adapter import train_adapter

    # As `prefect deploy -n train_adapter/local` registers it (its prefect.yaml entry's setting).
    (local,) = [
        d
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "local" and d["entrypoint"].endswith(":train_adapter")
    ]
    enforce = local.get("enforce_parameter_schema", True)
    deployment = train_adapter.to_deployment(name="bad-parameters", enforce_parameter_schema=enforce)
    deployment.apply()
    flow_run = run_deployment("train_adapter/bad-parameters", parameters=BAD, timeout=0)
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "BRIGHTRUN_HOME": str(brightrun_home)}
    executed = subprocess.run(
        [str(PREFECT), "flow-run", "execute", str(flow_run.id)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_failed(), (state, executed.stdout[-3000:], executed.stderr[-3000:])
    message = state.message or ""
    print(message)
    for where in ("training.max_steps", "training.learning_rate", "lora.r"):
        assert where in message, message
    assert "Traceback" not in message
    assert "invalid train_adapter parameters (nothing was started)" in message
    registry = brightrun_home / "registry.db"
    if registry.exists():  # the run's Resources may open it; no job row is written
        from brightrun.registry import open_registry_url
        from brightrun.registry import repository as repo

        engine = open_registry_url(f"sqlite:///{registry}")
        try:
            assert repo.list_jobs(engine) == []
        finally:
            engine.dispose()


def test_the_served_deployment_leaves_the_check_to_the_flow() -> None:
    from deployments.serve import TRAIN_DEPLOYMENT, build_deployments

    (served,) = [d for d in build_deployments(include_scheduled=False) if d.name == TRAIN_DEPLOYMENT]
    assert served.enforce_parameter_schema is False
