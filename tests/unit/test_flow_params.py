"""train_adapter parameter validation: every problem reported at once, before anything starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.settings import ComputeBackend, load_settings
from brightrun.spec import TrainingSettings
from flows.params import TrainRequest, build_job_spec, dataset_display_name, resolve_train_request


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_set_fields_override_the_preset_and_the_preset_fills_the_rest(
    brightrun_home: Path, sample_dataset: Path, model_dir: Path
) -> None:
    resolved = resolve_train_request(
        {
            "dataset": str(sample_dataset),
            "base_model": str(model_dir),
            "preset": "aggressive",
            "training": {"learning_rate": 5e-5, "max_steps": 6, "batch_size": 2},
            "lora": {"dropout": 0.2},
            "quantization": {"load_in_4bit": False},
            "preprocessing": {"validation_fraction": 0.25},
        },
        load_settings(),
    )
    spec = resolved.spec
    assert spec.training.learning_rate == 5e-5  # set beats the preset
    assert spec.lora.r == 32  # the preset fills what nobody set
    assert spec.lora.dropout == 0.2
    assert spec.training.batch_size == 2
    assert spec.quantization.load_in_4bit is False
    assert spec.preprocessing.validation_fraction == 0.25
    assert spec.training.warmup_steps <= 6  # a short run does not spend itself warming up
    assert resolved.compute is ComputeBackend.local
    assert resolved.dataset_name == "brightrun-sample"
    assert resolved.storage_url == str(brightrun_home / "storage")


def test_a_section_given_as_a_model_counts_only_its_set_fields(
    brightrun_home: Path, sample_dataset: Path, model_dir: Path
) -> None:
    resolved = resolve_train_request(
        TrainRequest(
            dataset=str(sample_dataset),
            base_model=str(model_dir),
            preset="conservative",
            training=TrainingSettings(max_steps=30),
        ),
        load_settings(),
    )
    # TrainingSettings' own default learning rate (2e-4) must not beat the preset's 1e-4.
    assert resolved.spec.training.learning_rate == 1e-4
    assert resolved.spec.training.max_steps == 30


def test_recorded_request_round_trips_to_the_same_spec(
    brightrun_home: Path, sample_dataset: Path, model_dir: Path
) -> None:
    raw = {
        "dataset": str(sample_dataset),
        "base_model": str(model_dir),
        "preset": "conservative",
        "training": {"max_steps": 7},
        "created_by": str(uuid.uuid4()),
    }
    first = resolve_train_request(raw, load_settings())
    recorded = first.request.recorded()
    assert recorded["training"] == {"max_steps": 7}  # no defaults frozen into the record
    again = resolve_train_request(recorded, load_settings())
    assert again.spec == first.spec


def test_every_problem_is_reported_at_once(brightrun_home: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        resolve_train_request(
            {
                "dataset": str(tmp_path / "missing.json"),
                "base_model": str(tmp_path / "no-model"),
                "lora": {"r": 64, "alpha": 2},
                "training": {"max_steps": 5, "warmup_steps": 50},
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
        resolve_train_request(
            {
                "dataset": str(sample_dataset),
                "base_model": "meta-llama/Meta-Llama-3-8B",
                "training": {"learning_rate": -1, "epochs": 0},
                "lora": {"rank": 8},
                "preset": "reckless",
            },
            load_settings(),
        )
    problems = info.value.problems
    assert any(p.startswith("training.learning_rate") for p in problems)
    assert any(p.startswith("training.epochs") for p in problems)
    assert any(p.startswith("lora.rank") for p in problems)
    assert any(p.startswith("preset") for p in problems)
    assert len(problems) == 4


def test_a_relative_dataset_path_is_checked_from_the_working_directory(
    brightrun_home: Path, sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sample_dataset.parent)
    ok = resolve_train_request(
        {"dataset": sample_dataset.name, "base_model": "meta-llama/Meta-Llama-3-8B"}, load_settings()
    )
    assert ok.dataset_name == sample_dataset.stem
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        resolve_train_request(
            {"dataset": sample_dataset.name, "base_model": "meta-llama/Meta-Llama-3-8B"}, load_settings()
        )
    assert any(f"from {tmp_path}" in p for p in info.value.problems)


def test_dataset_or_training_file_id_exactly_one(brightrun_home: Path, sample_dataset: Path) -> None:
    with pytest.raises(InputError) as none:
        resolve_train_request({"base_model": "org/m"}, load_settings())
    assert any("training_file_id" in p for p in none.value.problems)
    with pytest.raises(InputError) as both:
        resolve_train_request(
            {"base_model": "org/m", "dataset": str(sample_dataset), "training_file_id": str(uuid.uuid4())},
            load_settings(),
        )
    assert any("not both" in p for p in both.value.problems)
    by_id = resolve_train_request(
        {"base_model": "org/m", "training_file_id": "0b9f9a8e-7a2c-4c8e-9a55-0d6f3b8e1a11"}, load_settings()
    )
    assert by_id.dataset_name == "training-file-0b9f9a8e"


def test_a_json_lines_file_says_which_format_is_expected(brightrun_home: Path, tmp_path: Path) -> None:
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"a": 1}\n')
    with pytest.raises(InputError) as info:
        resolve_train_request({"dataset": str(lines), "base_model": "org/m"}, load_settings())
    assert any("JSON Lines" in p and "brightrun-lora-v4" in p for p in info.value.problems)


def test_hub_id_accepted_without_a_local_directory(brightrun_home: Path, sample_dataset: Path) -> None:
    resolved = resolve_train_request(
        {"dataset": str(sample_dataset), "base_model": "meta-llama/Meta-Llama-3-8B", "preset": None},
        load_settings(),
    )
    assert resolved.spec.base_model == "meta-llama/Meta-Llama-3-8B"
    assert resolved.spec.preset is None


def test_runpod_with_key_and_s3_storage_passes(
    brightrun_home: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-test")
    resolved = resolve_train_request(
        {
            "dataset": str(sample_dataset),
            "base_model": "meta-llama/Meta-Llama-3-8B",
            "compute": "runpod",
            "storage_url": "s3://bucket/brightrun",
            "provisioning": {"gpu_types": ["NVIDIA A40"], "max_cost_usd": 3},
        },
        load_settings(),
    )
    assert resolved.compute is ComputeBackend.runpod
    assert resolved.spec.provisioning.max_cost_usd == 3
    assert resolved.spec.provisioning.gpu_types == ["NVIDIA A40"]


def test_spec_without_preset_has_only_defaults_and_names() -> None:
    spec = build_job_spec(
        TrainRequest(dataset="s3://b/x/feedback-2024.json", base_model="org/m", preset=None)
    )
    assert spec.base_model == "org/m"
    assert spec.training == TrainingSettings()
    assert dataset_display_name("s3://b/x/feedback-2024.json") == "feedback-2024"
    assert dataset_display_name("https://h/x/data.json?X-Amz-Signature=abc") == "data"
    assert dataset_display_name("/data/sample.jsonl") == "sample"


def test_the_flow_signature_lists_every_train_request_field_with_its_default() -> None:
    """The flow's parameters are written out (Prefect builds the deployment's form from the
    signature) and the body hands them to `TrainRequest` by name: a field added to one and not
    the other, or a default that differs, fails here."""
    import inspect

    from flows.train_adapter import train_adapter

    parameters = inspect.signature(train_adapter.fn).parameters
    assert set(parameters) - {"job_id"} == set(TrainRequest.model_fields)
    for name, field in TrainRequest.model_fields.items():
        default = parameters[name].default
        if field.is_required():
            assert default is inspect.Parameter.empty, name
        else:
            assert default == field.default, name
