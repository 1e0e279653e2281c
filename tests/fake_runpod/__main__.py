"""`python -m tests.fake_runpod --port P`: the fake RunPod API for local development.

Point the product at it with RUNPOD_API_BASE_URL=http://127.0.0.1:P RUNPOD_API_KEY=<key>;
turn knobs with e.g. `curl -XPOST localhost:P/admin/interrupt -d '{"pod_id": "..."}'`.
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.fake_runpod.server import FakeRunPod


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_runpod")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="fake-runpod-key")
    parser.add_argument("--workdir", default=None, help="where pod logs go (default: a temp dir)")
    args = parser.parse_args()
    fake = FakeRunPod(api_key=args.api_key, workdir=args.workdir)
    url = fake.serve(args.port)
    print(f"fake RunPod at {url}  (RUNPOD_API_BASE_URL={url} RUNPOD_API_KEY={args.api_key})", flush=True)
    print(f"pod logs in {fake.workdir}; state: GET {url}/admin/state", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    left = fake.shutdown()
    if left:
        print(f"killed pods still running: {', '.join(left)}")


if __name__ == "__main__":
    main()
