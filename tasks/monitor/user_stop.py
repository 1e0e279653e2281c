"""A stop asked by the person at the terminal: Ctrl-C in `brightrun train`, `resume`, `demo`.

The CLI's SIGINT handler (cli/interrupt.py) only sets this flag; the monitor sees it within a
poll, SIGTERMs the trainer (which finishes its step and commits a checkpoint when one fits in
`checkpoint.sigterm_grace_seconds`) and ends the attempt as `stopped`. The flow then records
the job `failed` with failure kind `stopped`, which `brightrun resume` accepts. One flag per
process: a CLI process runs one job; a worker or `serve` process never sets it.
"""

from __future__ import annotations

import threading

STOPPED_BY_USER = "stopped by the user"

_requested = threading.Event()


def request_user_stop() -> None:
    _requested.set()


def user_stop_requested() -> bool:
    return _requested.is_set()


def wait_for_user_stop(seconds: float) -> bool:
    """Sleep up to `seconds`, waking at once on a Ctrl-C (the monitor's poll wait): the person
    at the terminal does not wait out a poll interval."""
    return _requested.wait(seconds)


def clear_user_stop() -> None:
    """For a process that runs a second job after a stop (tests)."""
    _requested.clear()
