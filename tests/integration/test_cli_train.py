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


def test_estimate_prints_ranges_and_rents_nothing(brightrun_home: Path, tiny_model: Path) -> None:
    """`--estimate` prepares the data for real counts, prints time and cost per GPU type, exits 0,
    and creates no job, registry or pod. A 70B model on 48 GB GPUs says it does not fit."""
    env = {**os.environ, "BRIGHTRUN_HOME": str(brightrun_home), "HF_HUB_OFFLINE": "1"}
    sample = REPO / "examples" / "brightrun-sample.json"
    small = subprocess.run(
        [sys.executable, "-m", "cli", "train", str(sample), "--base-model", str(tiny_model), "--estimate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert small.returncode == 0, small.stderr[-2000:]
    assert "NVIDIA H100 PCIe" in small.stdout and "on-demand" in small.stdout
    assert not (brightrun_home / "registry.db").exists()
    big = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "train",
            str(sample),
            "--base-model",
            "meta-llama/Meta-Llama-3-70B-Instruct",
            "--estimate",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # 70B fits none of the default policy's 48 GB GPUs: the table, then exit 2 saying what fits.
    assert big.returncode == 2, big.stderr[-2000:]
    assert "none of provisioning.gpu_types" in big.stderr and "NVIDIA H200" in big.stderr
    a6000 = next(line for line in big.stdout.splitlines() if line.startswith("NVIDIA RTX A6000"))
    assert " NO " in a6000
    assert "sharded training (FSDP) is not supported yet" in big.stdout
    assert "approximate" in big.stdout  # no hub here: counted with the tiny tokenizer, and said so
    assert not (brightrun_home / "registry.db").exists()


def test_train_on_a_file_holding_an_exam_conversation_exits_2(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path
) -> None:
    """Issue 25: the sample's conversation in a registered evaluation set keeps it out of training."""
    env = {**os.environ, "BRIGHTRUN_HOME": str(brightrun_home), "PREFECT_API_URL": prefect_harness}
    sample = REPO / "examples" / "brightrun-sample.json"

    def brightrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip

    made = brightrun(
        "evalset", "create", "exam", "--from", str(sample), "--conversation", "conv-0005-6697f21e"
    )
    assert made.returncode == 0, made.stderr[-2000:]
    done = brightrun("train", str(sample), "--base-model", str(tiny_model), "--max-steps", "1")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "conversation 6 (id " in done.stderr and "is in evaluation set 'exam' (version 1)" in done.stderr
    assert not list((brightrun_home / "storage").glob("datasets/*"))
    assert not list((brightrun_home / "storage").glob("jobs/*/data/*"))
