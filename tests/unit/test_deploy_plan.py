"""The deploy's pure planning (issue 24): the new env from the old one, and what is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from brightrun.compute.runpod_serverless import Template
from brightrun.errors import InputError
from brightrun.registry.promotion import AdapterRow
from tasks.adapters.deploy import RoutedAdapter, check_template, plan_env, redact_env

BASE = "meta-llama/Meta-Llama-3-8B-Instruct"


def _adapter(name: str, rank: int = 16, base: str = BASE, share: int = 100) -> RoutedAdapter:
    row = AdapterRow(
        id=f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}",
        training_job_id="00000000-0000-0000-0000-000000000001",
        artifact_type="lora_adapter",
        storage_path="x",
        file_size_bytes=None,
        sha256=None,
        base_model=base,
        validation_loss=None,
        validation_perplexity=None,
        deployment_status="stored",
        deployed_at=None,
        metadata={},
        created_at=datetime.now(UTC),
        served_name=name,
    )
    return RoutedAdapter(row, name, share, rank, base, f"brightrun/adapters/{row.id}")


def _template(image: str = "runpod/worker-v1-vllm:v2.7.0", env: dict[str, str] | None = None) -> Template:
    return Template("t1", "t", image, "", 20, 0, None, True, env if env is not None else {"MODEL_NAME": BASE})


def test_plan_keeps_every_key_it_does_not_own() -> None:
    before = {"MODEL_NAME": BASE, "HF_TOKEN": "hf_x", "MAX_MODEL_LEN": "8192", "MAX_LORAS": "4"}
    env = plan_env(before, [_adapter("a-1"), _adapter("b-2", share=50)])
    assert {k: env[k] for k in ("MODEL_NAME", "HF_TOKEN", "MAX_MODEL_LEN")} == {
        "MODEL_NAME": BASE,
        "HF_TOKEN": "hf_x",
        "MAX_MODEL_LEN": "8192",
    }
    assert env["ENABLE_LORA"] == "true" and env["MAX_LORAS"] == "4" and env["MAX_LORA_RANK"] == "16"
    modules = json.loads(env["LORA_MODULES"])
    assert [m["name"] for m in modules] == ["a-1", "b-2"]
    assert all(m["base_model_name"] == BASE and m["path"].startswith("/runpod-volume/") for m in modules)
    assert plan_env({"MODEL_NAME": BASE}, [_adapter("a"), _adapter("b")])["MAX_LORAS"] == "2"


def test_rank_above_max_lora_rank_is_refused_unless_raised() -> None:
    with pytest.raises(
        InputError, match=r"rank 32, above the endpoint's MAX_LORA_RANK=16.*--max-lora-rank 32"
    ):
        plan_env({"MODEL_NAME": BASE}, [_adapter("a", rank=32)])
    assert plan_env({"MODEL_NAME": BASE}, [_adapter("a", rank=32)], max_lora_rank=32)["MAX_LORA_RANK"] == "32"
    with pytest.raises(InputError, match="vLLM accepts"):
        plan_env({"MODEL_NAME": BASE}, [_adapter("a")], max_lora_rank=24)


def test_base_mismatch_names_both() -> None:
    with pytest.raises(InputError, match=r"trained on other/base.*MODEL_NAME=meta-llama"):
        plan_env({"MODEL_NAME": BASE}, [_adapter("a", base="other/base")])


def test_template_must_be_worker_vllm_with_a_model() -> None:
    check_template(_template(), "ep")
    with pytest.raises(InputError, match="not RunPod's worker-vllm"):
        check_template(_template(image="me/server:1"), "ep")
    with pytest.raises(InputError, match="sets no MODEL_NAME"):
        check_template(_template(env={}), "ep")


def test_secrets_are_redacted() -> None:
    env = {
        "HF_TOKEN": "hf_x",
        "AWS_SECRET_ACCESS_KEY": "s",
        "API_KEY": "k",
        "MODEL_NAME": BASE,
        "EMPTY_TOKEN": "",
    }
    assert redact_env(env) == {
        "HF_TOKEN": "***",
        "AWS_SECRET_ACCESS_KEY": "***",
        "API_KEY": "***",
        "MODEL_NAME": BASE,
        "EMPTY_TOKEN": "",
    }
