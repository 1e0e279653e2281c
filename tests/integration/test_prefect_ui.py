"""A served deployment run through `run_deployment`, then read in the Prefect UI (headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.training import demo_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_DIR = REPO / "test-artifacts"

SERVE_SCRIPT = """
from flows.train_adapter import train_adapter
from prefect import serve
serve(train_adapter.to_deployment(name="serve", concurrency_limit=1), pause_on_shutdown=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on a free port with its own SQLite; yields (base URL, env)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"{base}/api",
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start in 90 s")
        yield base, env
    finally:
        _stop(proc)
        log.close()


def _chromium(url: str, tmp_path: Path, *, screenshot: Path | None = None) -> str:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=30000",
        "--window-size=1400,1000",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    return out.stdout


def _dom_showing(url: str, tmp_path: Path, *needles: str, tries: int = 4) -> str:
    """The page's DOM once it shows every needle. The SPA fetches from the API in real time
    while Chromium's budget is virtual time: on a loaded machine a first render can be early."""
    dom = ""
    for _ in range(tries):
        dom = _chromium(url, tmp_path)
        if all(n in dom for n in needles):
            break
        time.sleep(2)
    return dom


def test_served_deployment_run_shows_its_artifacts_in_the_ui(
    prefect_server: tuple[str, dict[str, str]], brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: run scripts/bootstrap.sh --dev (installs Debian chromium)")
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base, env = prefect_server
    serve_log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT],
        cwd=REPO,
        env={**env, "BRIGHTRUN_HOME": str(brightrun_home), "PYTHONPATH": str(REPO)},
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: f"{base}/api"}):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                found = httpx.post(f"{base}/api/deployments/filter", json={"limit": 10}, timeout=10).json()
                if any(d["name"] == "serve" for d in found):
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"deployment not served: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            run = run_deployment(
                "train_adapter/serve", parameters=demo_params(tiny_model, max_steps=4), timeout=240
            )
        assert run.state is not None and run.state.is_completed(), (
            run.state,
            (tmp_path / "serve.log").read_text()[-3000:],
        )
    finally:
        _stop(server)
        serve_log.close()

    flow_run = httpx.get(f"{base}/api/flow_runs/{run.id}", timeout=10).json()
    assert re.fullmatch(r"train-brightrun-sample-tiny-llama-[0-9a-f-]{36}", flow_run["name"])
    run_job_id = flow_run["name"][-36:]
    body = {"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}, "sort": "CREATED_DESC", "limit": 100}
    artifacts = httpx.post(f"{base}/api/artifacts/filter", json=body, timeout=10).json()
    keys = {a["key"] for a in artifacts if a["key"]}
    summary_key = next(k for k in keys if k.endswith("-summary"))
    report_key = next(k for k in keys if k.endswith("-dataset-report"))
    assert any(k.endswith("-progress") for k in keys) and any(k.endswith("-loss-curve") for k in keys)

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    shot = ARTIFACTS_DIR / "prefect-ui-run.png"
    shot.unlink(missing_ok=True)
    _chromium(f"{base}/runs/flow-run/{run.id}", tmp_path, screenshot=shot)
    assert shot.is_file() and shot.stat().st_size > 10_000
    shutil.copy(shot, tmp_path / shot.name)

    dom = _dom_showing(
        f"{base}/artifacts/key/{summary_key}",
        tmp_path,
        f"Result of training job {run_job_id}",
        flow_run["name"],
    )
    (ARTIFACTS_DIR / "prefect-ui-summary.html").write_text(dom)
    assert summary_key in dom
    assert "Can't connect" not in dom
    # The artifact page names the artifact, its description and the run it came from.
    assert f"Result of training job {run_job_id}" in dom and flow_run["name"] in dom
    # The artifact's own page renders the markdown body a user reads.
    summary_id = next(a["id"] for a in artifacts if a["key"] == summary_key)
    dom = _dom_showing(f"{base}/artifacts/artifact/{summary_id}", tmp_path, "Perplexity", "Sample replies")
    (ARTIFACTS_DIR / "prefect-ui-summary-body.html").write_text(dom)
    assert "Perplexity" in dom and "Sample replies" in dom
    dom = _dom_showing(f"{base}/artifacts/key/{report_key}", tmp_path, f"Dataset report of job {run_job_id}")
    assert report_key in dom and f"Dataset report of job {run_job_id}" in dom
    _chromium(
        f"{base}/artifacts/artifact/{summary_id}",
        tmp_path,
        screenshot=ARTIFACTS_DIR / "prefect-ui-summary.png",
    )
