"""A training run as a person sees it in the Prefect UI, in a real browser.

A real `prefect server` serves the UI; `deployments/serve.py`'s deployment of
`train_adapter` runs the trainings (`run_deployment`, as the UI's Run button does). Headless
Chromium, driven over the DevTools protocol, loads the pages and measures what they show:
the summary with eval loss and perplexity, the loss chart drawn as an image of non-zero
size, one progress bar, a bounded number of metrics tables, the trainer's own log lines in
the run's logs, and a run form without 'Property is type None'. A second run is cancelled
with the call the UI's Cancel button makes (`set_flow_run_state(..., Cancelling())`).
Screenshots land in `test-artifacts/`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.training import demo_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_DIR = REPO / "test-artifacts"
MAX_METRICS_TABLE_VERSIONS = 20

SERVE_SCRIPT = """
from prefect import serve
from deployments.serve import build_deployments
serve(*build_deployments(include_scheduled=False), pause_on_shutdown=False)
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


def _wait(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


# ---------------------------------------------------------------- a browser over CDP


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, run JS, click, shoot."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        port = _free_port()
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                "--window-size=1400,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def page_target() -> dict[str, Any] | None:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return None
            return next((t for t in targets if t["type"] == "page"), None)

        try:
            target = _wait("chromium's DevTools endpoint", page_target, 60)
            self.ws = connect(target["webSocketDebuggerUrl"], max_size=None)
        except BaseException:
            _stop(self.proc)  # type: ignore[arg-type]
            raise
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, what: str, expression: str, timeout: float = 60) -> Any:
        """The SPA fetches from the API as it renders: wait until the page shows it."""
        return _wait(what, lambda: self.js(expression), timeout)

    def text(self) -> str:
        return str(self.js("document.body.innerText") or "")

    def click_tab(self, name: str) -> None:
        clicked = self.js(
            "(() => { const tab = [...document.querySelectorAll('li.p-tab')]"
            f".find(e => e.textContent.trim() === {json.dumps(name)});"
            " if (tab) tab.click(); return !!tab; })()"
        )
        assert clicked, f"no {name!r} tab on the page"

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            _stop(self.proc)  # type: ignore[arg-type]


# SVG pictures inside markdown artifacts, with their decoded and laid-out sizes.
IMAGES_JS = """[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/svg'))
  .map(i => ({natural: i.naturalWidth, width: i.getBoundingClientRect().width,
              height: i.getBoundingClientRect().height, complete: i.complete, alt: i.alt}))"""
IMAGES_READY_JS = (
    f"(() => {{ const i = {IMAGES_JS}; return i.length && i.every(x => x.complete) ? i : null }})()"
)


# ---------------------------------------------------------------- servers


@dataclass
class Served:
    base: str
    api: str
    home: Path
    tmp: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Served]:
    """`prefect server start` on a free port with its own SQLite, and `deployments/serve.py`
    serving `train_adapter` against it with its own BRIGHTRUN_HOME."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: run scripts/bootstrap.sh --dev (installs Debian chromium)")
    tmp = tmp_path_factory.mktemp("prefect-ui")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIGHTRUN_")},
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"{base}/api",
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        "BRIGHTRUN_HOME": str(tmp / "home"),
        "PYTHONPATH": str(REPO),
    }
    server_log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed below)
    serve_log = open(tmp / "serve.log", "wb")  # noqa: SIM115 (closed below)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

        def healthy() -> bool:
            if procs[0].poll() is not None:
                pytest.fail(f"prefect server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the Prefect server", healthy, 90)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SERVE_SCRIPT],
                cwd=REPO,
                env=env,
                stdout=serve_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

        def deployment_served() -> bool:
            if procs[1].poll() is not None:
                pytest.fail(f"serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
            found = httpx.post(f"{base}/api/deployments/filter", json={"limit": 10}, timeout=10).json()
            return any(d["name"] == "serve" for d in found)

        _wait("the served deployment", deployment_served, 90)
        yield Served(base=base, api=f"{base}/api", home=tmp / "home", tmp=tmp)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        server_log.close()
        serve_log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        b.close()


def _run(served: Served, parameters: dict[str, Any], timeout: float) -> Any:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: served.api}):
        return run_deployment("train_adapter/serve", parameters=parameters, timeout=timeout)


def _job_id(served: Served, flow_run_id: Any) -> str:
    """The job id from the run's name (`train-<dataset>-<model>-<job id>`), once it is renamed."""

    def renamed() -> str | None:
        name = httpx.get(f"{served.api}/flow_runs/{flow_run_id}", timeout=10).json()["name"]
        return name[-36:] if name.count("-") >= 8 and not name.endswith("-new") else None

    return str(_wait("the run's job id", renamed, 120))


def _logs(served: Served, flow_run_id: Any) -> list[dict[str, Any]]:
    body = {"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    logs: list[dict[str, Any]] = []
    while True:
        page = httpx.post(f"{served.api}/logs/filter", json={**body, "offset": len(logs)}, timeout=10).json()
        logs += page
        if len(page) < 200:
            return logs


def _job(served: Served, job_id: str) -> Any:
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo

    engine = open_registry_url(f"sqlite:///{served.home / 'registry.db'}")
    try:
        return repo.get_job(engine, job_id)
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the tests


def test_a_finished_run_reads_well_in_the_ui(served: Served, tiny_model: Path, browser: Browser) -> None:
    run = _run(served, demo_params(tiny_model, max_steps=8), timeout=300)
    assert run.state is not None and run.state.is_completed(), (
        run.state,
        (served.tmp / "serve.log").read_text()[-3000:],
    )
    job_id = _job_id(served, run.id)
    short = job_id.replace("-", "")[:8]

    # -- what the API holds: one card per thing, keyed by the job's short id
    body = {"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}, "limit": 200}
    artifacts = httpx.post(f"{served.api}/artifacts/filter", json=body, timeout=10).json()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for artifact in artifacts:
        by_key.setdefault(artifact["key"], []).append(artifact)
    for what in ("summary", "progress", "metrics", "loss-curve", "dataset-report"):
        assert f"job-{short}-{what}" in by_key, sorted(by_key)
    assert len([a for a in artifacts if a["type"] == "progress"]) == 1
    assert by_key[f"job-{short}-progress"][0]["data"] == 100.0
    assert len(by_key[f"job-{short}-dataset-report"]) == 1
    # Every version of the metrics table the run ever made (the key's history, not only this filter).
    versions = httpx.post(
        f"{served.api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [f"job-{short}-metrics"]}}, "limit": 200},
        timeout=10,
    ).json()
    assert 1 <= len(versions) <= MAX_METRICS_TABLE_VERSIONS
    table = json.loads(versions[0]["data"])
    assert table[0]["step"] == 8  # the table ends current
    # The flow-level section comes first in the run's Artifacts tab: the summary is alone there.
    assert [a["key"] for a in artifacts if a["task_run_id"] is None] == [f"job-{short}-summary"]

    # -- the trainer's own lines in the run's logs
    # Run logs reach the API in batches sent in the background: the last may land after the
    # run's final state. Wait for it, bounded; a line never forwarded still fails.
    deadline = time.monotonic() + 30
    while True:
        messages = [log["message"] for log in _logs(served, run.id)]
        if any(m.startswith("trainer: step 8/8 loss") for m in messages) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(m.startswith("trainer: step 8/8 loss") for m in messages), messages[-40:]
    assert any(m.startswith("trainer: validation loss at step 0") for m in messages)
    job = _job(served, job_id)
    assert job.status == "completed"
    assert job.training_log_path and Path(job.training_log_path).is_file()
    assert "trainer: step 8/8" in Path(job.training_log_path).read_text()

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    base = served.base

    # -- the summary: eval loss, perplexity, and the loss chart as a picture
    summary_id = by_key[f"job-{short}-summary"][0]["id"]
    browser.goto(f"{base}/artifacts/artifact/{summary_id}")
    browser.wait_for("the summary's body", "document.body.innerText.includes('Sample replies')")
    text = browser.text()
    assert "Can't connect" not in text
    assert "Eval loss" in text and "Perplexity" in text and "before training" in text
    images = browser.wait_for(
        "the summary's loss chart",
        IMAGES_READY_JS,
    )
    assert images[0]["natural"] > 0 and images[0]["width"] > 0 and images[0]["height"] > 0, images
    browser.screenshot(ARTIFACTS_DIR / "prefect-ui-summary.png")

    # -- the loss curve's own card
    curve_id = by_key[f"job-{short}-loss-curve"][0]["id"]
    browser.goto(f"{base}/artifacts/artifact/{curve_id}")
    images = browser.wait_for(
        "the loss chart",
        IMAGES_READY_JS,
    )
    assert len(images) == 1 and images[0]["natural"] == 640 and images[0]["height"] > 100, images
    browser.screenshot(ARTIFACTS_DIR / "prefect-ui-loss-curve.png")

    # -- the run page: trainer lines in its Logs tab; the summary first in its Artifacts tab
    browser.goto(f"{base}/runs/flow-run/{run.id}")
    browser.wait_for("the run's logs", "document.body.innerText.includes('trainer: step')")
    browser.screenshot(ARTIFACTS_DIR / "prefect-ui-run.png")
    browser.click_tab("Artifacts")
    browser.wait_for(
        "the run's artifacts",
        f"document.body.innerText.includes('job-{short}-summary')"
        " && document.body.innerText.includes('Task runs')",
    )
    # The tab lists a "Flow run" section, then a "Task runs" one (the page's own tab bar
    # names task runs too, before them): the summary is the first card, alone in the first.
    text = browser.text()
    section = text[text.rindex("Flow run\n") : text.rindex("Task runs")]
    assert f"job-{short}-summary" in section and section.count(f"job-{short}-") == 1, section
    browser.screenshot(ARTIFACTS_DIR / "prefect-ui-run-artifacts.png")

    # -- the run form: a field per parameter, each described, none stuck on 'type None'
    deployment_id = httpx.get(f"{served.api}/flow_runs/{run.id}", timeout=10).json()["deployment_id"]
    browser.goto(f"{base}/deployments/deployment/{deployment_id}/run")
    browser.wait_for("the run form", "document.body.innerText.includes('base_model')")
    time.sleep(1)  # the form's sections render after its first fields
    text = browser.text()
    assert "Property is type" not in text
    assert "brightrun-lora-v4" in text and "(default 0.0002)" in text
    browser.screenshot(ARTIFACTS_DIR / "prefect-ui-run-form.png")


def test_cancel_from_the_ui_records_cancelled_and_terminates_the_pod(
    served: Served, tiny_model: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from brightrun.compute import PodState
    from brightrun.compute.local import LocalCompute

    run = _run(served, demo_params(tiny_model, max_steps=100_000), timeout=0)
    job_id = _job_id(served, run.id)
    status_file = served.home / "storage" / "jobs" / job_id / "status.json"

    def training() -> bool:
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return False
        return status["phase"] == "training" and status["step"] >= 1

    _wait("the trainer's first step", training, 240)
    # What the UI's Cancel button sends.
    with temporary_settings({PREFECT_API_URL: served.api}), get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(message="Cancelled from the UI"))

    def cancelled() -> bool:
        state = httpx.get(f"{served.api}/flow_runs/{run.id}", timeout=10).json()["state"]
        return state["type"] == "CANCELLED"

    _wait("the run to be cancelled", cancelled, 120)
    job = _wait("the job's final status", lambda: (j := _job(served, job_id)).is_terminal and j, 60)
    assert job.status == "cancelled", (job.status, job.error_message)
    pods = LocalCompute(served.home).list_pods(job_id)
    assert pods and all(p.state == PodState.terminated for p in pods), pods
    messages = [log["message"] for log in _logs(served, run.id)]
    assert any("cancelled from Prefect" in m for m in messages), messages[-30:]
