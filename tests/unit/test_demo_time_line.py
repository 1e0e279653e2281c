"""The demo's last line states its time with the conditions it ran under (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cli.training import demo_time_line, seconds_since_process_start


def test_the_line_names_seconds_cores_and_load() -> None:
    assert demo_time_line(26.3, 2, 0.41) == "demo took 26 s on 2 cores, load average 0.4 (1 min)"
    assert "on ? cores" in demo_time_line(5, None, 0.0)


def test_process_age_counts_from_the_process_start_not_the_call() -> None:
    code = (
        "import time; time.sleep(1.2)\n"
        "from cli.training import seconds_since_process_start\n"
        "print(seconds_since_process_start())"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    )
    wall = time.monotonic() - started
    age = float(out.stdout.strip())
    assert 1.2 <= age <= wall + 0.1, (age, wall)
    assert seconds_since_process_start() > 0
