"""Issue 25 part 1, pure parts: the seed's presets, warmup_ratio, and when an init adapter fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.settings import Settings
from brightrun.spec import JobSpec, TrainingSettings, warmup_steps
from flows.params import resolve_train_request
from tasks.adapters.continue_from import fit_problems

SEED_GUIDE = {
    # preset: (r, alpha, dropout, learning rate, epochs, batch size, accumulation)
    "conservative": (8, 16, 0.05, 1e-4, 2.0, 2, 8),
    "balanced": (16, 32, 0.05, 2e-4, 3.0, 4, 4),
    "aggressive": (32, 64, 0.1, 3e-4, 4.0, 4, 4),
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


@pytest.fixture
def data_file() -> Path:
    # A valid training file: resolve_train_request checks a local file's contents early.
    return Path(__file__).resolve().parents[2] / "examples" / "brightrun-sample.json"


def _spec(model_dir: Path, data_file: Path, tmp_path: Path, **params: object) -> JobSpec:
    raw = {"dataset": str(data_file), "base_model": str(model_dir), **params}
    return resolve_train_request(raw, Settings(home=tmp_path / "home")).spec


@pytest.mark.parametrize("preset", SEED_GUIDE)
def test_each_preset_is_the_seed_guide(preset: str, model_dir: Path, data_file: Path, tmp_path: Path) -> None:
    spec = _spec(model_dir, data_file, tmp_path, preset=preset)
    t, lora = spec.training, spec.lora
    got = (
        lora.r,
        lora.alpha,
        lora.dropout,
        t.learning_rate,
        t.epochs,
        t.batch_size,
        t.gradient_accumulation_steps,
    )
    assert got == SEED_GUIDE[preset]


def test_set_fields_still_win_over_the_preset(model_dir: Path, data_file: Path, tmp_path: Path) -> None:
    spec = _spec(model_dir, data_file, tmp_path, preset="aggressive", training={"epochs": 1, "batch_size": 1})
    assert (spec.training.epochs, spec.training.batch_size, spec.training.learning_rate) == (1.0, 1, 3e-4)


def test_warmup_ratio_is_a_share_of_the_run_rounded_up() -> None:
    assert warmup_steps(TrainingSettings(warmup_ratio=0.1), 95) == 10  # ceil(9.5), as transformers
    assert warmup_steps(TrainingSettings(warmup_ratio=0.0), 95) == 0
    assert warmup_steps(TrainingSettings(warmup_steps=7), 95) == 7
    assert warmup_steps(TrainingSettings(warmup_steps=700), 95) == 95


def test_warmup_ratio_replaces_the_presets_steps_but_not_both_given(
    model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    spec = _spec(model_dir, data_file, tmp_path, training={"warmup_ratio": 0.05, "max_steps": 3})
    assert spec.training.warmup_ratio == 0.05
    with pytest.raises(InputError) as both:
        _spec(model_dir, data_file, tmp_path, training={"warmup_ratio": 0.05, "warmup_steps": 3})
    assert "warmup_ratio and training.warmup_steps" in str(both.value.problems)
    with pytest.raises(InputError) as bad:
        _spec(model_dir, data_file, tmp_path, training={"warmup_ratio": 1.5})
    assert "training.warmup_ratio" in str(bad.value.problems)


def _job(**lora: object) -> JobSpec:
    return JobSpec(
        job_id="j", base_model="org/base", lora={"r": 16, "target_modules": ["q_proj", "v_proj"], **lora}
    )


def test_an_adapter_fits_with_the_same_base_rank_and_targets_in_any_order() -> None:
    config = {"r": 16, "target_modules": ["v_proj", "q_proj"], "lora_alpha": 64}
    assert fit_problems("org/base", config, _job()) == []


def test_each_mismatch_is_named() -> None:
    problems = fit_problems("org/other", {"r": 8, "target_modules": ["q_proj"]}, _job())
    assert len(problems) == 3
    assert "base model 'org/other'" in problems[0]
    assert "LoRA rank 8, this job's lora.r is 16" in problems[1]
    assert "target modules ['q_proj']" in problems[2]


def test_the_same_local_model_under_two_spellings_fits(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    job = JobSpec(job_id="j", base_model=str(tmp_path / "m"), lora={"r": 16, "target_modules": ["q_proj"]})
    assert fit_problems(f"{tmp_path}/./m", {"r": 16, "target_modules": "q_proj"}, job) == []
