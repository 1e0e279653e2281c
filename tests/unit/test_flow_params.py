"""train_adapter parameter validation: every problem reported at once, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.settings import ComputeBackend, load_settings
from flows.params import TrainAdapterParams, build_spec_dict, dataset_display_name, resolve_job_request


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_valid_request_applies_preset_then_flags(
    brightrun_home: Path, sample_dataset: Path, model_dir: Path
) -> None:
    request = resolve_job_request(
        {
            "dataset": str(sample_dataset),
            "base_model": str(model_dir),
            "preset": "aggressive",
            "hyperparameters": {"learning_rate": 5e-5, "max_steps": 6, "quantize": False},
            "config": {"lora": {"dropout": 0.2}, "training": {"batch_size": 2}},
        },
        load_settings(),
    )
    spec = request.spec
    assert spec.training.learning_rate == 5e-5  # the flag beats the preset
    assert spec.lora.r == 32  # the preset fills what nobody set
    assert spec.lora.dropout == 0.2  # the config file beats the preset
    assert spec.training.batch_size == 2
    assert spec.quantization.load_in_4bit is False
    assert spec.training.warmup_steps <= 6  # a short run does not spend itself warming up
    assert request.compute is ComputeBackend.local
    assert request.dataset_name == "brightrun-sample"
    assert request.storage_url == str(brightrun_home / "storage")


def test_every_problem_is_reported_at_once(brightrun_home: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve_job_request(
            {
                "dataset": str(tmp_path / "missing.json"),
                "base_model": str(tmp_path / "no-model"),
                "hyperparameters": {"lora_r": 64, "lora_alpha": 2, "max_steps": 5, "warmup_steps": 50},
                "compute": "runpod",
                "webhook_url": "ftp://example",
            },
            load_settings(),
        )
    text = str(info.value)
    problems = info.value.problems
    assert any("missing.json does not exist" in p for p in problems)
    assert any("no-model is not a model directory" in p for p in problems)
    assert any("RUNPOD_API_KEY" in p for p in problems)
    assert any("s3://" in p and "compute=runpod" in p for p in problems)
    assert any("webhook_url" in p and "http(s)" in p for p in problems)
    assert any("BRIGHTRUN_WEBHOOK_SECRET" in p for p in problems)
    assert any("lora.alpha=2" in p and "warmup_steps=50" in p for p in problems)
    assert "nothing was started" in text


def test_type_errors_name_each_field(brightrun_home: Path, sample_dataset: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve_job_request(
            {
                "dataset": str(sample_dataset),
                "base_model": "meta-llama/Meta-Llama-3-8B",
                "hyperparameters": {"learning_rate": -1, "epochs": 0, "lora_rank": 8},
                "preset": "reckless",
            },
            load_settings(),
        )
    problems = info.value.problems
    assert any(p.startswith("hyperparameters.learning_rate") for p in problems)
    assert any(p.startswith("hyperparameters.epochs") for p in problems)
    assert any(p.startswith("hyperparameters.lora_rank") for p in problems)
    assert any(p.startswith("preset") for p in problems)
    assert len(problems) == 4


def test_hub_id_accepted_without_a_local_directory(brightrun_home: Path, sample_dataset: Path) -> None:
    request = resolve_job_request(
        {"dataset": str(sample_dataset), "base_model": "meta-llama/Meta-Llama-3-8B", "preset": None},
        load_settings(),
    )
    assert request.spec.base_model == "meta-llama/Meta-Llama-3-8B"
    assert request.spec.preset is None


def test_runpod_with_key_and_s3_storage_passes(
    brightrun_home: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-test")
    request = resolve_job_request(
        {
            "dataset": str(sample_dataset),
            "base_model": "meta-llama/Meta-Llama-3-8B",
            "compute": "runpod",
            "storage_url": "s3://bucket/brightrun",
            "provisioning": {"gpu_types": ["NVIDIA A40"], "max_cost_usd": 3},
        },
        load_settings(),
    )
    assert request.compute is ComputeBackend.runpod
    assert request.spec.provisioning.max_cost_usd == 3
    assert request.spec.provisioning.gpu_types == ["NVIDIA A40"]


def test_spec_dict_layers_and_names() -> None:
    params = TrainAdapterParams(dataset="s3://b/x/feedback-2024.json", base_model="org/m", preset=None)
    spec = build_spec_dict(params)
    assert spec["base_model"] == "org/m"
    assert "training" not in spec
    assert dataset_display_name("s3://b/x/feedback-2024.json") == "feedback-2024"
    assert dataset_display_name("/data/sample.jsonl") == "sample"
