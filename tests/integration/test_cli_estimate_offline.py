"""`--estimate` without hub access (issue 21): the offline path at once, saying why the
tokenizer and the prices are missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_estimate_without_the_hub_or_a_runpod_key_says_why(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RUNPOD_API_KEY", "HF_HUB_OFFLINE")}
    env.update(
        BRIGHTRUN_HOME=str(tmp_path / "home"),
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",  # nothing listens: no hub from here
        HF_HOME=str(tmp_path / "hf"),
    )
    args = [sys.executable, "-m", "cli", "train", str(REPO / "examples" / "brightrun-sample.json")]
    args += ["--base-model", "meta-llama/Meta-Llama-3-8B-Instruct", "--estimate"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "does not answer from here" in done.stdout, done.stdout
    assert "RUNPOD_API_KEY is not set" in done.stdout, done.stdout
    assert "fits" in done.stdout
