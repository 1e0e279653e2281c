"""`brightrun train` on a bad training file: exit 2, every problem named, no job data written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_train_on_a_bad_file_exits_2_naming_every_problem(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"training_file_metadata": {"format_spec": "brightrun-lora-v3"}, "conversations": []}')
    done = subprocess.run(
        [sys.executable, "-m", "cli", "train", str(bad), "--base-model", str(tiny_model)],
        cwd=REPO,
        env={**os.environ, "BRIGHTRUN_HOME": str(brightrun_home), "PREFECT_API_URL": prefect_harness},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "training_file_metadata.format_spec" in done.stderr
    assert "conversations: is empty" in done.stderr
    assert not list((brightrun_home / "storage").glob("jobs/*/spec.json"))
