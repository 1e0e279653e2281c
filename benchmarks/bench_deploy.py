"""Benchmark: deploy time on the fake RunPod (issue 24): upload to the volume, rolling
release, smoke test, per deploy.

Runs the end-to-end test `tests/integration/test_deploy_endpoint.py::
test_deploy_then_rollback_on_the_endpoint` (two tiny adapters trained by the real trainer,
a SeaweedFS bucket as the network volume, the fake's worker-vllm-like workers) with
`BRIGHTRUN_DEPLOY_TIMINGS` pointing at a file, where the test writes each deploy's timings;
prints them. On the fake a release is a worker start (python + torch import + the tiny
4-bit base + adapters): on RunPod it is a container start plus vLLM's model load, minutes
for a Llama 3 8B.

    .venv/bin/python benchmarks/bench_deploy.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.jsonl"
        env = {**os.environ, "BRIGHTRUN_DEPLOY_TIMINGS": str(out), "PYTHONPATH": str(REPO)}
        test = "tests/integration/test_deploy_endpoint.py::test_deploy_then_rollback_on_the_endpoint"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=REPO, env=env)
        if done.returncode != 0 or not out.exists():
            print("the deploy test failed; no figures", file=sys.stderr)
            return 1
        print(f"{'deploy':<12} {'upload s':>9} {'release s':>10} {'smoke s':>8} {'total s':>8}")
        for line in out.read_text().splitlines():
            t = json.loads(line)
            print(
                f"{t['what']:<12} {t.get('upload_s', 0):>9.2f} {t.get('release_s', 0):>10.2f} "
                f"{t.get('smoke_s', 0):>8.2f} {t.get('total_s', 0):>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
