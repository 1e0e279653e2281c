"""benchmarks/gpu_check.py in its CPU form (the tiny model through the same code path as the
8B check on a GPU), so the command stays ready for the day a GPU runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures.training import REPO, trainer_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_gpu_check_runs_in_tiny_form_and_passes(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--steps", "4"],
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-4000:]
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if ":" in line}
    assert (
        "4-bit nf4" in lines["settings"] and "gradient checkpointing True, packing True" in lines["settings"]
    )
    assert float(lines["tokens/s"].split()[1].replace(",", "")) > 0
    assert lines["exact resume"].startswith(
        "exact resume: yes (killed after step 3, committed 2, resumed from 2"
    )
    assert lines["packed boundaries respected (sdpa)"].split(": ")[1].startswith("yes")
    assert "checkpoint save + commit" in lines
    assert (
        lines["70B fits 80 GB"].startswith("70B fits 80 GB: no") and "batch_size 3" in lines["70B fits 80 GB"]
    )
    assert out.rstrip().endswith("result: PASS")
