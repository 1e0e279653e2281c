"""After a Ctrl-C's stop is recorded, the CLI ends without Prefect's exit work (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# An exit handler as slow as Prefect's embedded-server stop on a loaded machine.
SLOW_TEARDOWN = """
import atexit, sys, time
atexit.register(time.sleep, 30)
from cli.interrupt import exit_after_stop
print("hint", flush=True)
sys.stdout.write("unflushed tail")
exit_after_stop()
"""


def test_the_process_ends_with_130_at_once_and_its_output_flushed() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SLOW_TEARDOWN], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert done.returncode == 130, done.stderr
    assert done.stdout == "hint\nunflushed tail"
    assert took < 20, took  # the 30 s exit handler never ran
