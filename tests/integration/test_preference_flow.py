"""Preference jobs through `train_adapter` on real parts (Prefect API, SQLite registry, local
storage, the trainer process, 4-bit QLoRA on the tiny model on CPU): a DPO round starts from
an SFT round's adapter, its dataset stage deduplicates and holds out pairs, and it reports held-
out preference accuracy; a bad preference file from the CLI exits 2 naming the line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brightrun import layout, prepared
from brightrun.protocol import EvalReport
from brightrun.settings import load_settings
from brightrun.storage import LocalStorage
from cli.training import demo_params
from tests.fixtures.preferences import write_dpo, write_kto
from tests.fixtures.training import adapter_tensors, max_abs_diff

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _dataset_artifact(api_url: str, flow_run_id: str) -> str:
    from tests.integration.test_train_flow import _artifacts_of_run

    published = _artifacts_of_run(api_url, flow_run_id)
    return next(a["data"] for k, a in published.items() if k.endswith("-dataset-report"))


def test_dpo_round_continues_from_sft_through_the_flow(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from brightrun.registry import open_registry
    from brightrun.registry import repository as repo
    from flows.train_adapter import train_adapter

    sft_params = demo_params(tiny_model, max_steps=2)
    sft_params["evaluation"] = {"sample_generations": 0}
    sft = train_adapter(**sft_params)
    source = write_dpo(sample_dataset, tmp_path / "thumbs.preferences.jsonl")
    lines = source.read_text().splitlines()
    source.write_text("\n".join([*lines, lines[0]]) + "\n")  # the same pair found in two windows

    engine = open_registry(load_settings())
    try:
        (round1,) = repo.list_artifacts(engine, training_job_id=sft["job_id"])
        sft_run = repo.get_job(engine, sft["job_id"]).flow_run_id
        params = demo_params(tiny_model, max_steps=3)
        params["dataset"] = str(source)
        params["training"] = {**params["training"], "objective": "dpo", "learning_rate": 1e-2}
        params["evaluation"] = {"sample_generations": 0}
        dpo = train_adapter(**params, init_adapter=round1.id)
        assert dpo["status"] == "completed"
        job = repo.get_job(engine, dpo["job_id"])
        (validated,) = [
            e.payload for e in repo.list_events(engine, dpo["job_id"]) if e.type == "dataset_validated"
        ]
        row = repo.get_training_file(engine, job.training_file_id)
    finally:
        engine.dispose()

    # Each run's Prefect dataset artifact: the SFT report's balance section, the preference report.
    sft_report = _dataset_artifact(prefect_harness, str(sft_run))
    assert "## Scaffolding balance" in sft_report and "| grief_to_stability | 4 |" in sft_report
    dpo_report = _dataset_artifact(prefect_harness, str(job.flow_run_id))
    assert "# Preference data: thumbs.preferences.jsonl" in dpo_report
    assert "| duplicates dropped | 1 |" in dpo_report
    assert validated["objective"] == "dpo" and validated["duplicates"] == 1
    assert validated["records"] == len(lines) and validated["validation_examples"] > 0
    assert row.format == prepared.PREFERENCE_FORMAT
    root = Path(job.storage_prefix)
    spec = json.loads((root / "spec.json").read_text())
    assert spec["training"]["objective"] == "dpo"
    assert spec["quantization"]["load_in_4bit"] is True  # QLoRA NF4, on the CPU
    assert spec["init_adapter"]["artifact_id"] == round1.id
    assert prepared.read_meta(root / "data").format == prepared.PREFERENCE_FORMAT
    held_out = [json.loads(x) for x in (root / "data" / prepared.VALIDATION).read_text().splitlines()]
    assert len(held_out) == validated["validation_examples"]
    # It trained: its adapter moved away from the SFT adapter it started from.
    sft_storage = LocalStorage(Path(round1.storage_path).parent)
    assert max_abs_diff(adapter_tensors(LocalStorage(root)), adapter_tensors(sft_storage)) > 1e-6
    report = EvalReport.model_validate(json.loads((root / layout.EVAL).read_text()))
    assert report.preference is not None
    assert 0.0 <= report.preference["reward_accuracy"] <= 1.0


def test_bad_preference_file_from_the_cli_exits_2_naming_the_line(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    good = write_kto(sample_dataset, tmp_path / "good.jsonl").read_text().splitlines()
    broken = json.loads(good[1])
    del broken["label"]
    bad = tmp_path / "thumbs.jsonl"
    bad.write_text("\n".join([good[0], json.dumps(broken), *good[2:4]]) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "train",
            str(bad),
            "--base-model",
            str(tiny_model),
            "--objective",
            "kto",
        ],
        cwd=REPO,
        env={**os.environ, "BRIGHTRUN_HOME": str(brightrun_home), "PREFECT_API_URL": prefect_harness},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "thumbs.jsonl:2: label: expected true (thumbs up) or false (thumbs down)" in done.stderr
    assert not list((brightrun_home / "storage").glob("jobs/*/spec.json"))
    assert not list((brightrun_home / "storage").glob("jobs/*/data/meta.json"))
