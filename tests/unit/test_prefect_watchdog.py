"""The watchdog stops the embedded Prefect server once the CLI is gone (cli/prefect_watchdog.py),
however the CLI ended: here by os._exit, as after a Ctrl-C (no exit handler runs). It once
stopped itself first, its own command line holding the server's marker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.prefect_watchdog import SERVER_MARKER
from tests.fixtures.cli_runs import alive

REPO = Path(__file__).resolve().parents[2]
CLI = f"""
import os, subprocess, sys, time
from cli.prefect_watchdog import watch_embedded_prefect_server
watch_embedded_prefect_server()
server = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)", "--factory", {SERVER_MARKER!r}],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
print(server.pid, flush=True)
time.sleep(1.5)  # the watchdog polls every 0.5 s
os._exit(130)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="the watchdog reads /proc (Linux)")
def test_a_cli_gone_by_os_exit_takes_its_server_with_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-c", CLI], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr
    server = int(done.stdout.split()[0])
    try:
        deadline = time.monotonic() + 10
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server), "the server outlived the CLI"
    finally:
        if alive(server):
            os.kill(server, 9)
