"""Ctrl-C during `brightrun train` on a terminal (issue 21): the CLI runs on a pty with the
embedded Prefect server (no PREFECT_API_URL), and SIGINT goes to its whole foreground process
group, as a terminal sends it. The first Ctrl-C stops the job within 10 s with the resume hint,
a resumable status and no process left behind; `brightrun resume` then completes it."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "training": {
        "max_seq_length": 512,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.005,
        "gradient_checkpointing": False,
    },
    "evaluation": {"max_new_tokens": 8, "sample_generations": 1},
}


class Terminal:
    """A process on a pty, in its own session (the pty's foreground group is its own)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def screen(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # the whole foreground group, as a terminal does

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _processes_of(home: Path) -> list[int]:
    """Live processes started for this test's BRIGHTRUN_HOME (CLI, trainer, Prefect server...)."""
    marker = f"BRIGHTRUN_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_ctrl_c_stops_the_job_and_resume_completes_it(
    brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        BRIGHTRUN_HOME=str(brightrun_home),
        PREFECT_HOME=str(tmp_path / "prefect"),
        BRIGHTRUN_TRAINER_STEP_DELAY="0.3",  # a GPU-like pace: Ctrl-C lands mid-training
        TERM="xterm",
    )
    args = [sys.executable, "-m", "cli", "train", str(REPO / "examples" / "brightrun-sample.json")]
    args += ["--base-model", str(tiny_model), "--max-steps", "30", "--checkpoint-steps", "2"]
    args += ["--config", str(config)]
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    terminal = Terminal(args, env)
    try:

        def training() -> bool:
            if not (brightrun_home / "registry.db").exists():
                return False
            jobs = repo.list_jobs(engine, limit=None)
            return bool(jobs) and jobs[0].status == "training" and (jobs[0].current_step or 0) >= 3

        _wait_for(training, 240, "the job to train a few steps")
        assert terminal.proc.poll() is None, terminal.screen
        job_id = repo.list_jobs(engine, limit=None)[0].id
        pressed = time.monotonic()
        terminal.ctrl_c()
        rc = terminal.proc.wait(timeout=60)
        took = time.monotonic() - pressed
        terminal.reader.join(timeout=5)
        screen = terminal.screen
        print(f"first Ctrl-C to exit: {took:.1f}s")  # the figure the README quotes
        # The promise is 10 s; a machine loaded past its cores (a shared CI box) stretches every
        # step and poll, so there the bound is looser rather than the test flaky.
        bound = 10 if os.getloadavg()[0] <= (os.cpu_count() or 1) else 45
        assert took < bound, f"exit took {took:.1f}s\n{screen}"
        assert rc == 130, screen
        assert f"resume {job_id}" in screen, screen
        assert "Traceback" not in screen, screen

        job = repo.get_job(engine, job_id)
        assert job.status == "failed" and job.metadata.get("failure_kind") == "stopped", job
        assert "stopped by the user" in (job.error_message or "")
        events = repo.list_events(engine, job_id, type="interrupted")
        stops = [e for e in events if e.payload.get("source") == "user"]
        assert stops and stops[0].payload["reason"] == "stopped by the user"
        _wait_for(lambda: not _processes_of(brightrun_home), 15, "no process of the job left")
    finally:
        terminal.close()

    resumed = subprocess.run(
        [sys.executable, "-m", "cli", "resume", job_id[:8]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    job = repo.get_job(engine, job_id)
    assert job.status == "completed" and job.current_step == 30, job
    assert not _processes_of(brightrun_home)
