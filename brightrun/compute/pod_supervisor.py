"""The trainer image's ENTRYPOINT: PID 1 of a RunPod pod (infra/Dockerfile.trainer).

RunPod runs the image's ENTRYPOINT with the pod's start command (`dockerArgs`) in place of
CMD, so the start command is this program's arguments (brightrun.compute.runpod.start_command):

    python -m brightrun.compute.pod_supervisor --deadline-seconds N [--grace-seconds G] \
        -- python -m trainer --spec s3://bucket/jobs/<id>/spec.json

It runs the trainer as its child and

- passes a stop signal on: `docker stop` (a spot warning, a stop) sends SIGTERM to PID 1
  alone, and the trainer needs it to commit a checkpoint;
- enforces the pod's deadline (`provisioning.max_duration_hours`): SIGTERM, then SIGKILL
  after the grace;
- when the trainer has ended for any reason, removes its own pod through the RunPod API
  (brightrun.compute.self_destruct, with the pod-scoped key RunPod puts in the pod's env),
  since RunPod would otherwise restart the container, and a pod whose orchestrator died
  would bill forever.

Imports nothing of Prefect, the flows or torch: it runs in the trainer image.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("brightrun.pod")

DEFAULT_GRACE_SECONDS = 30.0


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m brightrun.compute.pod_supervisor",
        description="Run the trainer under the pod's deadline, then remove the pod.",
    )
    parser.add_argument("--deadline-seconds", type=float, required=True)
    parser.add_argument("--grace-seconds", type=float, default=DEFAULT_GRACE_SECONDS)
    parser.add_argument("--no-self-destruct", action="store_true", help="leave the pod when the trainer ends")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the trainer's command line")
    args = parser.parse_args(list(argv))
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no trainer command: pass it after `--`")
    return args, command


def _stop(child: subprocess.Popen[bytes], grace_seconds: float) -> int:
    """SIGTERM (the trainer commits a checkpoint), then SIGKILL to its whole group after the grace."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        return child.wait()


def supervise(command: list[str], deadline_seconds: float, grace_seconds: float) -> tuple[int, str]:
    """Run `command` to its end or the deadline; returns (exit code, why it ended)."""
    stopping: list[int] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    # Handlers first: a stop that comes while the trainer starts is passed on all the same.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Its own process group, so the deadline's SIGKILL also reaches the trainer's children.
    child = subprocess.Popen(command, process_group=0)
    children.append(child)
    for signum in stopping:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
    try:
        code = child.wait(timeout=deadline_seconds)
    except subprocess.TimeoutExpired:
        log.warning("pod deadline of %.0fs reached: stopping the trainer", deadline_seconds)
        return _stop(child, grace_seconds), "deadline"
    return code, ("stopped" if stopping else "trainer exited")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pod: %(message)s", stream=sys.stderr)
    args, command = _parse(sys.argv[1:] if argv is None else argv)
    code, why = supervise(command, args.deadline_seconds, args.grace_seconds)
    log.info("trainer ended (%s) with exit code %s", why, code)
    if not args.no_self_destruct:
        from brightrun.compute.self_destruct import remove_this_pod

        remove_this_pod()
    return code if code >= 0 else 128 - code  # a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
