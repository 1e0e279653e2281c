"""`python -m brightrun.compute.self_destruct`: a pod removes itself through the RunPod API.

No `runpodctl` in our image: RunPod puts `RUNPOD_POD_ID` and a pod-scoped `RUNPOD_API_KEY`
in every pod's environment, and our own client terminates the pod with them. An API
outage is waited out (bounded by `BRIGHTRUN_SELF_DESTRUCT_PATIENCE_SECONDS`, default 900):
the orchestrator and the reaper remain as the other lines of defence.

Outside a pod (no `RUNPOD_POD_ID`) it does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger("brightrun.pod")

DEFAULT_PATIENCE_SECONDS = 900.0


def remove_this_pod(
    *,
    patience_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Terminate the pod this process runs in; True once RunPod accepted it. On RunPod the
    container dies during (or right after) the call, so this rarely returns there."""
    pod_id = os.environ.get("RUNPOD_POD_ID")
    key = os.environ.get("RUNPOD_API_KEY")
    if not pod_id:
        log.info("not in a RunPod pod (RUNPOD_POD_ID unset): nothing to remove")
        return False
    if not key:
        log.error("pod %s: RUNPOD_API_KEY is unset, cannot remove this pod; the reaper will", pod_id)
        return False
    from brightrun.compute.runpod_client import GraphQLRunPodClient, RunPodAuthError, RunPodError

    if patience_seconds is None:
        patience_seconds = float(
            os.environ.get("BRIGHTRUN_SELF_DESTRUCT_PATIENCE_SECONDS") or DEFAULT_PATIENCE_SECONDS
        )
    client = GraphQLRunPodClient(key, timeout=30.0, max_attempts=1)
    give_up = clock() + patience_seconds
    delay = 1.0
    try:
        while True:
            try:
                client.terminate_pod(pod_id)
            except RunPodAuthError as exc:  # never retried: the key will not get better
                log.error("pod %s: could not remove itself: %s", pod_id, exc)
                return False
            except RunPodError as exc:
                if clock() + delay > give_up:
                    log.error(
                        "pod %s: could not remove itself within %.0fs: %s", pod_id, patience_seconds, exc
                    )
                    return False
                log.warning("pod %s: removing itself failed (%s); again in %.0fs", pod_id, exc, delay)
                sleep(delay)
                delay = min(delay * 2, 60.0)
            else:
                log.info("pod %s: removal requested", pod_id)
                return True
    finally:
        client.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pod: %(message)s", stream=sys.stderr)
    if not os.environ.get("RUNPOD_POD_ID"):
        log.info("not in a RunPod pod (RUNPOD_POD_ID unset): nothing to remove")
        return 0
    return 0 if remove_this_pod() else 1


if __name__ == "__main__":
    sys.exit(main())
