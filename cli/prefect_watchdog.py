"""The embedded Prefect server dies with the CLI process that started it (issue 15 item 7).

Without `PREFECT_API_URL`, Prefect starts its API as a child process (uvicorn) and stops it
at exit; a CLI killed with SIGKILL runs no exit handler, so the server would live on. A
small watchdog process, started before the flow, notices the CLI's end (a pipe only the CLI
holds closes) and terminates the Prefect server processes the CLI had started. Linux only
(it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SERVER_MARKER = "prefect.server.api.server:create_app"

_WATCHDOG = r"""
import os, select, signal, sys
parent, fd, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""

servers = set()
while True:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready and not os.read(fd, 1):
        break  # the CLI is gone: its end of the pipe closed
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        break
    for tid in tasks:
        try:
            with open(f"/proc/{parent}/task/{tid}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        servers.update(int(c) for c in children if marker in cmdline(c))
# This watchdog is a child too, and its own command line holds the marker: it must not be
# the first one it stops (it once was, and the server lived on).
servers.discard(os.getpid())
for pid in servers:
    if marker in cmdline(pid):  # still that server, not a reused pid
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
"""

_started = False


def watch_embedded_prefect_server() -> None:
    """Start the watchdog once per process, when Prefect will run its own API here."""
    global _started
    if _started or os.environ.get("PREFECT_API_URL") or not Path("/proc/self/task").is_dir():
        return
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(read_end), SERVER_MARKER],
        pass_fds=(read_end,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the CLI's process group: a Ctrl-C there is not for it
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)  # only this process holds it: its death closes the pipe
    _started = True
