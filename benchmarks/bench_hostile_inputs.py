#!/usr/bin/env python3
"""Benchmark of bounded parsing (issue 20, item 3). Prints figures; asserts nothing timed.

    .venv/bin/python benchmarks/bench_hostile_inputs.py [--work DIR]

Generates each hostile training file into a temp dir, validates it in a fresh subprocess
(the one `brightrun prepare` and the flow's dataset stage run) under a 2 GiB address-space
cap, and prints the message, the wall time and the peak RSS of that process:

- a 100,000-deep `[` bomb (368 KB; before: 22-23 GB, then killed by the kernel);
- a 2,000-level object (before: a raw RecursionError, exit 1);
- a 200 MB string field (before: 6 minutes, 8.3 GB, no message);
- a 3 GB file (sparse);
- for scale, a valid file of the same shape, scanned in full.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.unit.test_dataset_limits import deep_2000, depth_bomb, huge_file, huge_string  # noqa: E402
from tests.unit.test_dataset_schema import make_conversation, make_file  # noqa: E402

CAP = 2 * 1024**3
SCAN = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from tasks.dataset.schema import validate_dataset
result = validate_dataset(Path(sys.argv[1]))
print(result.messages()[0] if result.messages() else f"ok: {{result.conversations}} conversations")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def valid(path: Path) -> None:
    path.write_text(json.dumps(make_file([make_conversation(f"c{i}", 4) for i in range(5000)])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'input':<14} {'size':>12} {'seconds':>8} {'peak RSS':>9}  message")
    for name, make in [
        ("depth_bomb", depth_bomb),
        ("deep_2000", deep_2000),
        ("huge_string", huge_string),
        ("huge_file", huge_file),
        ("valid_5000", valid),
    ]:
        path = work / f"{name}.json"
        make(path)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", SCAN.format(cap=CAP), str(path)],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            print(f"{name:<14} failed: {proc.stderr[-500:]}")
            continue
        message, peak = proc.stdout.strip().splitlines()[-2:]
        print(f"{name:<14} {path.stat().st_size:>12} {seconds:>8.2f} {int(peak):>6} MB  {message[:90]}")
        path.unlink()


if __name__ == "__main__":
    main()
