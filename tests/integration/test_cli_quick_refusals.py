"""Refusals that need no model answer before torch loads (issue 21): each command runs in a
fresh interpreter that reports, at exit, whether `torch` was ever imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
UNKNOWN = "00000000-0000-0000-0000-000000000000"
PROBE = """
import atexit, sys
atexit.register(lambda: print("torch imported" if "torch" in sys.modules else "torch not imported"))
sys.argv = ["brightrun", *sys.argv[1:]]
from cli.main import main
main()
"""


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["promote", UNKNOWN, "--to", "production", "--force"], "--reason"),
        (["generate", UNKNOWN, "--prompt", "hi"], f"{UNKNOWN} is neither an artifact"),
        (["chat", UNKNOWN], f"{UNKNOWN} is neither an artifact"),
        (["export", UNKNOWN, "--out", "{occupied}"], "is not an empty directory"),
        (["download", UNKNOWN, "--out", "{occupied}"], "is not an empty directory"),
    ],
    ids=["force-without-reason", "generate-unknown", "chat-unknown", "export-occupied", "download-occupied"],
)
def test_refusal_answers_without_loading_torch(args: list[str], says: str, tmp_path: Path) -> None:
    occupied = tmp_path / "out"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    env = {**os.environ, "BRIGHTRUN_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    for var in ("BRIGHTRUN_DATABASE_URL", "BRIGHTRUN_STORAGE_URL", "BRIGHTRUN_CONFIG"):
        env.pop(var, None)
    argv = [a.replace("{occupied}", str(occupied)) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr, done.stderr
    assert "torch not imported" in done.stdout, done.stdout + done.stderr
