"""Ctrl-C during `brightrun train`, `resume` and `demo`: a way to stop, not a crash.

- The first Ctrl-C asks the monitor to stop (tasks/monitor/user_stop.py): the trainer gets
  SIGTERM, finishes its step, commits a checkpoint when one fits in its grace, and the job is
  recorded `failed` with failure kind `stopped` and an `interrupted` event "stopped by the
  user"; the CLI prints the job id and `brightrun resume JOB`, and exits 130.
- A second Ctrl-C exits at once: the job's local trainer is killed (its last committed
  checkpoint stays), the job is recorded the same way if the registry answers within a few
  seconds (else it stays live, which `resume` accepts too), and the hint is printed.

A terminal sends SIGINT to its whole foreground process group. The trainer runs in its own
session (brightrun/compute/local.py); Prefect's embedded API server would not, and would die
on the first Ctrl-C, leaving the flow to retry every call against a dead server for minutes.
So it is started in its own session too, and the CLI's watchdog (cli/prefect_watchdog.py)
still stops it when the CLI ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType, SimpleNamespace
from typing import Any, TextIO

from tasks.monitor.user_stop import STOPPED_BY_USER, request_user_stop

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
SECOND_PRESS_RECORD_WAIT_S = 3.0
REMOTE_LOG_DRAIN_S = 2.0


def resume_hint(job_id: str) -> str:
    return f"job {job_id} stopped; continue it with: {brightrun_command()} resume {job_id}"


def brightrun_command() -> str:
    """`brightrun` as the user can type it: the bare name when it is on PATH as this very
    program, else the full path of the venv's script (a newcomer has not activated the venv)."""
    import shutil

    script = os.path.join(os.path.dirname(sys.executable), "brightrun")
    on_path = shutil.which("brightrun")
    if on_path is not None and (not os.path.exists(script) or os.path.samefile(on_path, script)):
        return "brightrun"
    return script if os.path.exists(script) else "brightrun"


class CtrlC:
    """The SIGINT handler around one job's flow run in this process."""

    def __init__(self, job_id: str, stream: TextIO | None = None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.presses = 0

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.presses += 1
        if self.presses == 1:
            request_user_stop()
            self._say(
                f"\nCtrl-C: stopping job {self.job_id} after the current step (its checkpoint is "
                "kept when one fits); press Ctrl-C again to exit at once"
            )
            return
        self.exit_now()

    def exit_now(self) -> None:
        """The second Ctrl-C: no more waiting on anything that may hang."""
        worker = threading.Thread(target=stop_job_now, args=(self.job_id,), daemon=True)
        worker.start()
        worker.join(SECOND_PRESS_RECORD_WAIT_S)
        self._say(f"\n{resume_hint(self.job_id)}")
        os._exit(EXIT_INTERRUPTED)  # the watchdog stops the embedded Prefect server

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text + "\n")
            self.stream.flush()


def stop_job_now(job_id: str) -> None:
    """Kill the job's local trainer and record the stop (best-effort, bounded by the caller)."""
    from brightrun.compute.local import LocalCompute
    from brightrun.registry import repository as repo
    from brightrun.settings import load_settings

    settings = load_settings()
    local = LocalCompute(settings.home, grace_seconds=0.5)
    for pod in local.list_pods(job_id):
        if pod.state.value == "running":
            with contextlib.suppress(Exception):
                local.terminate(pod.pod_id)
    from brightrun.resources import Resources

    with contextlib.suppress(Exception), Resources.from_settings() as resources:
        job = repo.get_job(resources.registry, job_id)
        if job.is_terminal:
            return
        repo.transition_job(
            resources.registry, job_id, "failed", error_message=f"{STOPPED_BY_USER} (Ctrl-C twice)"
        )
        job = repo.get_job(resources.registry, job_id)
        repo.update_job(resources.registry, job_id, metadata={**job.metadata, "failure_kind": "stopped"})
        repo.add_event(resources.registry, job_id, "interrupted", reason=STOPPED_BY_USER, source="user")


def exit_after_stop(code: int = EXIT_INTERRUPTED) -> None:
    """End the CLI once a Ctrl-C's stop is recorded and its hint printed.

    What a normal exit would still do is Prefect's teardown: stopping the embedded server waits
    up to 5 s for uvicorn, the log and event workers drain to it, then the interpreter frees a
    large module graph: traced at 2.7 s after the hint on an idle 2-core machine and 3.5 s at
    load 6. None of it is needed: the job and the flow run's state are
    recorded, the server is a temporary one, and the watchdog (cli/prefect_watchdog.py) stops
    it as soon as this process is gone, so the flow run's last log lines may not reach it. A
    server of the user's own (`PREFECT_API_URL`) outlives the CLI and shows those lines in the
    UI: they get REMOTE_LOG_DRAIN_S to be sent.
    """
    if os.environ.get("PREFECT_API_URL"):
        with contextlib.suppress(Exception):
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=REMOTE_LOG_DRAIN_S)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def ctrl_c_stops(job_id: str, stream: TextIO | None = None) -> Iterator[CtrlC]:
    """`with ctrl_c_stops(job_id):` around the flow run (main thread only; elsewhere a no-op)."""
    handler = CtrlC(job_id, stream)
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    shield_embedded_server_from_ctrl_c()
    previous = signal.signal(signal.SIGINT, handler.on_sigint)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGINT, previous)


def shield_embedded_server_from_ctrl_c() -> None:
    """Start Prefect's embedded API server in its own session, out of the terminal's process
    group, so Ctrl-C reaches the CLI only. Prefect has no option for it: its start-up command is
    wrapped, and if Prefect renames it, Ctrl-C still works but the server dies with it (the
    views then stop calling it: tasks/prefect_api.py)."""
    if os.environ.get("PREFECT_API_URL"):
        return  # a server of its own: not the CLI's child
    try:
        from prefect.server.api import server as server_module
    except ImportError:
        return
    cls = server_module.SubprocessASGIServer
    original = getattr(cls, "_run_uvicorn_command", None)
    if original is None or getattr(original, "brightrun_shielded", False):
        return

    def run_in_own_session(self: Any) -> Any:
        real = server_module.subprocess

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
            return real.Popen(*args, start_new_session=True, **kwargs)

        server_module.subprocess = SimpleNamespace(**{**vars(real), "Popen": popen})
        try:
            return original(self)
        finally:
            server_module.subprocess = real

    run_in_own_session.brightrun_shielded = True  # type: ignore[attr-defined]
    cls._run_uvicorn_command = run_in_own_session
