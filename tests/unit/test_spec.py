from __future__ import annotations

import json

import pytest

from brightrun.errors import InputError
from brightrun.spec import PRESETS, JobSpec, PresetName, apply_preset, parse_spec


def test_defaults_are_qlora_with_pinned_fp32_adapter() -> None:
    spec = parse_spec({"job_id": "j", "base_model": "m"})
    assert spec.quantization.load_in_4bit and spec.quantization.quant_type == "nf4"
    assert spec.quantization.double_quant and spec.quantization.adapter_dtype == "float32"
    assert spec.training.group_by_length
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InputError) as caught:
        parse_spec(
            {
                "job_id": "",
                "base_model": "m",
                "training": {"learning_rate": -1, "batch_size": 0},
                "lora": {"bias": "some"},
                "unknown_section": {},
            }
        )
    text = str(caught.value)
    for where in ("job_id", "training.learning_rate", "training.batch_size", "lora.bias", "unknown_section"):
        assert where in text
    assert len(caught.value.problems) == 5


def test_cross_field_problems_are_listed_together() -> None:
    with pytest.raises(InputError) as caught:
        parse_spec(
            json.dumps(
                {
                    "job_id": "j",
                    "base_model": "m",
                    "lora": {"r": 64, "alpha": 8},
                    "training": {"max_steps": 5, "warmup_steps": 10},
                }
            )
        )
    text = str(caught.value)
    assert "lora.alpha=8" in text and "warmup_steps=10" in text


@pytest.mark.parametrize("preset", list(PresetName))
def test_presets_by_name_and_explicit_values_win(preset: PresetName) -> None:
    merged = apply_preset({"job_id": "j", "base_model": "m", "training": {"seed": 3}}, preset.value)
    spec = parse_spec(merged)
    assert spec.preset == preset
    assert spec.lora.r == PRESETS[preset]["lora"]["r"]
    assert spec.training.learning_rate == PRESETS[preset]["training"]["learning_rate"]
    assert spec.training.seed == 3
    explicit = parse_spec(
        apply_preset({"job_id": "j", "base_model": "m", "lora": {"r": 4, "alpha": 8}}, preset)
    )
    assert explicit.lora.r == 4


def test_presets_grow_from_conservative_to_aggressive() -> None:
    rates = [PRESETS[p]["training"]["learning_rate"] for p in PresetName]
    ranks = [PRESETS[p]["lora"]["r"] for p in PresetName]
    assert rates == sorted(rates) and ranks == sorted(ranks)
