"""Is the Prefect API this process talks to still there?

Without `PREFECT_API_URL`, Prefect runs its API as a child process of the CLI (the embedded
server). Once that child has exited, every call to it only waits out the client's retries
(minutes of them, and a screen of error dumps), so the views (artifacts, the cancel poll,
the run's logs) stop calling it. A server elsewhere is never judged from here.
"""

from __future__ import annotations

import sys


def embedded_server_gone() -> bool:
    """True when this process started Prefect's embedded API server and it has exited."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # never started here: a remote server, or none yet
        return False
    instances = getattr(getattr(server_module, "SubprocessASGIServer", None), "_instances", {})
    processes = [getattr(s, "server_process", None) for s in list(instances.values())]
    started = [p for p in processes if p is not None]
    return bool(started) and all(p.poll() is not None for p in started)
