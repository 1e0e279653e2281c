"""The README's worker section, run literally: a work pool, `prefect deploy -n train_adapter/local`
from the checkout, `prefect worker start --pool brightrun-process`, then a run from
`run_deployment`, which must complete (it once crashed with FileNotFoundError for the flow file
because prefect.yaml pointed the worker at an undocumented variable)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.training import demo_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")


def _env(api_url: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_CLI_PROMPT": "false"}
    env.pop("BRIGHTRUN_REPO", None)
    return env


@pytest.fixture
def process_worker(prefect_harness: str, brightrun_home: Path, tmp_path: Path) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    # An earlier test of this session may have made the pool.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="brightrun-process", type="process"))
    deployed = subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", "-n", "train_adapter/local"],
        cwd=REPO,
        env=_env(prefect_harness),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    log = (tmp_path / "worker.log").open("w")
    # Started from elsewhere, as an operator's service would be: the deployment says where to run.
    worker = subprocess.Popen(
        [str(PREFECT), "worker", "start", "--pool", "brightrun-process", "--limit", "1"],
        cwd=tmp_path,
        env=_env(prefect_harness),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


def test_a_run_through_the_documented_worker_completes(
    process_worker: None, tiny_model: Path, brightrun_home: Path, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment

    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings

    flow_run = run_deployment(
        "train_adapter/local", parameters=demo_params(tiny_model, max_steps=4), timeout=600, poll_interval=2
    )
    worker_log = (tmp_path / "worker.log").read_text()
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"{flow_run.state}\n{worker_log[-4000:]}"
    )
    engine = open_registry(load_settings())
    try:
        (job,) = repo.list_jobs(engine)
        assert job.status == "completed" and job.current_step == 4
        assert len(repo.list_artifacts(engine, training_job_id=job.id)) == 1
    finally:
        engine.dispose()
