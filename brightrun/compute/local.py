"""The local compute backend: each trainer attempt is a subprocess of this machine.

A "pod" here is a small supervisor process (`python -m brightrun.compute.local`) in its own
process group that runs `python -m trainer --spec URI` and records the trainer's exit code.
Pod state lives in `$BRIGHTRUN_HOME/pods/<pod_id>.json` and the output in `<pod_id>.log`,
so another process (the reaper, `brightrun resume`) can see and stop a pod it did not
start. Terminate sends SIGTERM to the group (the trainer checkpoints and exits 0 if it
can), waits the grace period, then SIGKILLs the group. Local compute costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from brightrun.compute import Compute, PodInfo, PodRequest, PodState

DEFAULT_GRACE_SECONDS = 30.0


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of `pid` (clock ticks since boot), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: exited, not yet reaped
        return None
    return int(fields[19])


def _alive(pid: int, start_ticks: int | None) -> bool:
    if Path("/proc").is_dir():
        ticks = _proc_start_ticks(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)
    try:  # no /proc (macOS): signal 0 only says the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class LocalCompute(Compute):
    name = "local"

    def __init__(
        self,
        home: Path | None = None,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        python: str = sys.executable,
    ) -> None:
        if home is None:
            from brightrun.settings import default_home

            home = default_home()
        self.pods_dir = Path(home) / "pods"
        self.grace_seconds = grace_seconds
        self.python = python
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._device: str | None = None

    def device_description(self) -> str:
        """What a local trainer runs on, for the job's events ("local GPU NVIDIA H100", "local
        CPU x86_64"), found without importing torch in the orchestrator."""
        if self._device is None:
            self._device = _local_device()
        return self._device

    # files -------------------------------------------------------------------------------
    def _state_path(self, pod_id: str) -> Path:
        if not pod_id or "/" in pod_id or pod_id.startswith("."):
            raise ValueError(f"invalid local pod id {pod_id!r}")
        return self.pods_dir / f"{pod_id}.json"

    def log_path(self, pod_id: str) -> Path:
        return self.pods_dir / f"{pod_id}.log"

    def _load(self, pod_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path(pod_id).read_text())
        except (OSError, ValueError):
            return None

    # interface ---------------------------------------------------------------------------
    def start(self, request: PodRequest) -> PodInfo:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        pod_id = f"local-{request.job_id}-{request.attempt}-{uuid.uuid4().hex[:8]}"
        rc_file = self.pods_dir / f"{pod_id}.rc"
        # The trainer numbers its metric chunks and events by attempt; the orchestrator's count wins.
        env = {**os.environ, "BRIGHTRUN_ATTEMPT": str(request.attempt), **request.env}
        command = [
            self.python,
            "-m",
            "brightrun.compute.local",
            "--rc-file",
            str(rc_file),
            "--",
            self.python,
            "-m",
            "trainer",
            "--spec",
            request.spec_uri,
        ]
        with open(self.log_path(pod_id), "ab") as log:
            proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[pod_id] = proc
        state = {
            "pod_id": pod_id,
            "job_id": request.job_id,
            "attempt": request.attempt,
            "spec_uri": request.spec_uri,
            "pid": proc.pid,
            "pgid": proc.pid,  # start_new_session: the supervisor leads its own group
            "start_ticks": _proc_start_ticks(proc.pid),
            "started_at": time.time(),
            "ended_at": None,
            "rc_file": str(rc_file),
            "log": str(self.log_path(pod_id)),
            "terminated": False,
        }
        _write_json(self._state_path(pod_id), state)
        return self._info(state)

    def get(self, pod_id: str) -> PodInfo:
        state = self._load(pod_id)
        if state is None:
            return PodInfo(pod_id=pod_id, job_id="", state=PodState.terminated)
        return self._info(state)

    def terminate(self, pod_id: str) -> None:
        state = self._load(pod_id)
        if state is None:
            return
        pgid = int(state["pgid"])
        if self._running(state):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds
            while time.monotonic() < deadline and self._running(state):
                time.sleep(0.1)
        # Whatever is left of the group (a trainer that outlived its supervisor too).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        proc = self._procs.get(pod_id)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        state["terminated"] = True
        state["ended_at"] = state.get("ended_at") or time.time()
        _write_json(self._state_path(pod_id), state)

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        if not self.pods_dir.is_dir():
            return []
        pods = []
        for path in sorted(self.pods_dir.glob("*.json")):
            state = self._load(path.stem)
            if state is not None and (job_id is None or state.get("job_id") == job_id):
                pods.append(self._info(state))
        return pods

    # state -------------------------------------------------------------------------------
    def _running(self, state: dict[str, Any]) -> bool:
        proc = self._procs.get(state["pod_id"])
        if proc is not None:
            return proc.poll() is None  # also reaps our own child
        return _alive(int(state["pid"]), state.get("start_ticks"))

    def _exit_code(self, state: dict[str, Any]) -> int | None:
        try:
            return int(Path(state["rc_file"]).read_text().strip())
        except (OSError, ValueError):
            proc = self._procs.get(state["pod_id"])
            return proc.returncode if proc is not None else None

    def _info(self, state: dict[str, Any]) -> PodInfo:
        running = self._running(state)
        if running:
            pod_state = PodState.running
        elif state.get("terminated"):
            pod_state = PodState.terminated
        else:
            pod_state = PodState.exited
        ended = state.get("ended_at")
        if not running and ended is None:
            ended = time.time()
            state["ended_at"] = ended
            with contextlib.suppress(OSError):
                _write_json(self._state_path(state["pod_id"]), state)
        uptime = (ended or time.time()) - float(state["started_at"])
        return PodInfo(
            pod_id=state["pod_id"],
            job_id=state["job_id"],
            state=pod_state,
            cost_per_hr=0.0,
            uptime_seconds=uptime,
            gpu_type=self.device_description(),
            spot=False,
            exit_code=None if running else self._exit_code(state),
            state_since=float(state["started_at"]) if running else ended,
        )


def _local_device() -> str:
    import platform
    import shutil

    if os.environ.get("CUDA_VISIBLE_DEVICES") != "" and shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            names = []
        names = [n.strip() for n in names if n.strip()]
        if names:
            return f"local GPU {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else "")
    return f"local CPU {platform.machine() or ''}".strip()


# the supervisor --------------------------------------------------------------------------------


def supervise(argv: list[str]) -> int:
    """`python -m brightrun.compute.local --rc-file F -- CMD...`: run CMD, write its exit code
    to F (atomically). A SIGTERM sent to this process alone is passed on to CMD."""
    if len(argv) < 4 or argv[0] != "--rc-file" or argv[2] != "--":
        print("usage: python -m brightrun.compute.local --rc-file FILE -- COMMAND...", file=sys.stderr)
        return 2
    rc_file, command = Path(argv[1]), argv[3:]
    child = subprocess.Popen(command)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    tmp = rc_file.with_name(f".{rc_file.name}.tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, rc_file)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1:]))
