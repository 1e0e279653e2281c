"""The cost and time model (tasks/cost_model.py): sizes from the model, fit, ranges, the cap."""

from __future__ import annotations

import pytest

from brightrun.errors import InputError
from brightrun.spec import JobSpec
from tasks import cost_model as cm
from tasks.cost_table import estimate_table, policy_fit_problem, render_estimate

LLAMA_8B = "meta-llama/Meta-Llama-3-8B-Instruct"
LLAMA_70B = "meta-llama/Meta-Llama-3-70B-Instruct"
PRICES = {
    "NVIDIA H200": (2.5, 4.0),
    "NVIDIA H100 80GB HBM3": (1.8, 3.0),
    "NVIDIA H100 PCIe": (1.4, 2.4),
    "NVIDIA A100 80GB PCIe": (0.8, 1.6),
    "NVIDIA L40S": (0.5, 0.9),
    "NVIDIA RTX A6000": (0.25, 0.5),
}


def spec(model: str = LLAMA_8B, **provisioning: object) -> JobSpec:
    return JobSpec(job_id="j", base_model=model, provisioning=provisioning)


def test_parameter_counts_match_the_published_llama3_sizes() -> None:
    assert cm.model_shape(LLAMA_8B).parameters == pytest.approx(8.03e9, rel=1e-3)
    assert cm.model_shape(LLAMA_70B).parameters == pytest.approx(70.55e9, rel=1e-3)
    # r=16 on the seven projections of Llama 3 8B: PEFT reports 41,943,040 trainable parameters.
    assert (
        cm.LLAMA3_8B.lora_parameters(16, JobSpec(job_id="j", base_model="m").lora.target_modules)
        == 41_943_040
    )


def test_a_local_config_sizes_any_model_and_an_unknown_hub_id_is_refused() -> None:
    config = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "tie_word_embeddings": True,
    }
    shape = cm.model_shape("/models/tiny", config)
    # per layer: q,o 64x64, k,v 64x32, mlp 3 x 64x128, 2 norms; + tied embedding + final norm
    assert shape.parameters == 2 * (2 * 4096 + 2 * 2048 + 3 * 8192 + 128) + 64_000 + 64
    with pytest.raises(InputError, match="config.json"):
        cm.model_shape("someone/unknown-model")


def test_step_time_scales_with_parameters_and_gpu_throughput() -> None:
    h100 = cm.GPUS["NVIDIA H100 80GB HBM3"]
    a6000 = cm.GPUS["NVIDIA RTX A6000"]
    small = cm.step_seconds(cm.LLAMA3_8B, 16_384, h100)
    big = cm.step_seconds(cm.LLAMA3_70B, 16_384, h100)
    assert big.low / small.low == pytest.approx(cm.LLAMA3_70B.parameters / cm.LLAMA3_8B.parameters)
    assert cm.step_seconds(cm.LLAMA3_8B, 16_384, a6000).low / small.low == pytest.approx(989 / 155)
    # 6 N T FLOPs at 40 % of 989 TFLOP/s
    assert small.low == pytest.approx(6 * cm.LLAMA3_8B.parameters * 16_384 / (989e12 * 0.4))
    assert small.high == pytest.approx(small.low * 2)
    two = cm.step_seconds(cm.LLAMA3_8B, 16_384, h100, gpu_count=2)
    assert small.low / 2 < two.low < small.low


def test_70b_does_not_fit_an_a6000_and_says_fsdp_is_not_supported() -> None:
    a6000 = cm.GPUS["NVIDIA RTX A6000"]
    problem = cm.fit_problem(cm.LLAMA3_70B, spec(LLAMA_70B), a6000)
    assert problem is not None and "sharded training (FSDP) is not supported yet" in problem
    assert cm.fit_problem(cm.LLAMA3_8B, spec(), a6000) is None
    assert cm.fit_problem(cm.LLAMA3_70B, spec(LLAMA_70B), cm.GPUS["NVIDIA H200"]) is None
    job = spec(LLAMA_70B, gpu_types=["NVIDIA RTX A6000", "NVIDIA L40S"])
    estimate = cm.estimate_job(job, 1000, PRICES, cm.LLAMA3_70B)
    with pytest.raises(InputError, match="fits none of provisioning.gpu_types"):
        cm.check_fit(estimate, job.provisioning)
    with pytest.raises(InputError, match="FSDP"):
        estimate.for_cap(job.provisioning)


def test_70b_at_the_default_length_on_80gb_suggests_a_batch_size_that_fits() -> None:
    problem = cm.fit_problem(cm.LLAMA3_70B, spec(LLAMA_70B), cm.GPUS["NVIDIA H100 80GB HBM3"])
    assert problem is not None and "training.batch_size" in problem and "FSDP" not in problem


def test_estimate_ranges_cost_and_network_volume() -> None:
    job = spec(gpu_types=["NVIDIA H100 PCIe", "NVIDIA L40S"], gpu_count=2)
    estimate = cm.estimate_job(job, 2000, PRICES, cm.LLAMA3_8B, train_tokens=2000 * 600)
    assert estimate.total_steps == cm.estimated_total_steps(job, 2000)
    assert estimate.tokens_per_step == 600 * 4 * 4
    row = estimate.gpus[0]
    assert row.hours is not None and row.spot_hours is not None and row.step_seconds is not None
    assert row.hours.low < row.hours.high <= row.spot_hours.high
    on_demand = row.usd(spot=False)
    assert on_demand is not None and on_demand.high == pytest.approx(row.hours.high * 2.4 * 2)
    with_volume = cm.estimate_job(spec(network_volume_id="v"), 2000, PRICES, cm.LLAMA3_8B)
    assert with_volume.startup_seconds.high < estimate.startup_seconds.high


def test_a_measured_seconds_per_step_wins_and_the_cap_uses_the_first_offer_at_its_slow_end() -> None:
    job = spec(
        gpu_types=["NVIDIA RTX A6000"],
        capacity="on_demand",
        seconds_per_step={"NVIDIA RTX A6000": 36.0},
        max_cost_usd=0.5,
    )
    estimate = cm.estimate_job(job, 1000, PRICES, cm.LLAMA3_8B)  # 125 steps: 1.25 h + start-up
    row = estimate.gpus[0]
    assert row.step_seconds == cm.Range(36.0, 36.0)
    cap = estimate.for_cap(job.provisioning)
    assert (cap.gpu_type, cap.spot) == ("NVIDIA RTX A6000", False)
    assert row.hours is not None and cap.hours == row.hours.high
    with pytest.raises(InputError, match="max_cost_usd=0.5"):
        cm.check_estimate(cap, job.provisioning)


def test_total_steps_is_the_trainers_own_plan() -> None:
    from trainer.data import BatchStream, Example, plan_steps

    for examples, epochs, batch, accumulation in [
        (100, 2.0, 4, 2),
        (1, 2.0, 4, 2),
        (37, 1.5, 3, 4),
        (9, 3.0, 2, 1),
    ]:
        job = JobSpec(
            job_id="j",
            base_model="m",
            training={"epochs": epochs, "batch_size": batch, "gradient_accumulation_steps": accumulation},
        )
        stream = BatchStream([Example([1, 2], [1, 2])] * examples, batch, seed=0)
        steps, _ = plan_steps(stream.batches_per_epoch, epochs, None, accumulation)
        assert cm.estimated_total_steps(job, examples) == steps


def test_the_table_lists_every_gpu_and_marks_what_does_not_fit() -> None:
    job = spec(LLAMA_70B)
    estimate = cm.estimate_job(job, 1000, PRICES, cm.LLAMA3_70B, gpu_types=cm.ESTIMATE_GPUS)
    table = render_estimate(estimate, job.provisioning)
    for name in cm.ESTIMATE_GPUS:
        assert name in table
    a6000 = next(line for line in table.splitlines() if line.startswith("NVIDIA RTX A6000 "))
    h200 = next(line for line in table.splitlines() if line.startswith("NVIDIA H200 "))
    assert " NO " in a6000 and " yes " in h200
    assert "fits none of provisioning.gpu_types" in table  # the default policy's GPUs are all 48 GB


def test_a_policy_that_nothing_fits_is_a_problem_naming_the_gpus_that_do() -> None:
    """`train --estimate` exits 2 on it (issue 21): 70B fits none of the default 48 GB GPUs."""
    job = spec(LLAMA_70B)
    estimate = cm.estimate_job(job, 1000, PRICES, cm.LLAMA3_70B, gpu_types=cm.ESTIMATE_GPUS)
    problem = policy_fit_problem(estimate, job.provisioning)
    assert problem is not None and "none of provisioning.gpu_types" in problem
    assert "NVIDIA H200" in problem and "NVIDIA RTX A6000" not in problem.split("fit:")[1]
    small = spec(LLAMA_8B)
    fits = cm.estimate_job(small, 1000, PRICES, cm.LLAMA3_8B, gpu_types=cm.ESTIMATE_GPUS)
    assert policy_fit_problem(fits, small.provisioning) is None


def test_cuda_device_names_map_to_the_table() -> None:
    assert cm.gpu_type("NVIDIA H100 PCIe") == cm.GPUS["NVIDIA H100 PCIe"]
    assert cm.gpu_type("NVIDIA H200") == cm.GPUS["NVIDIA H200"]
    assert cm.gpu_type("NVIDIA A100-SXM4-80GB") is not None
    assert cm.gpu_type("Tesla T4") is None


def test_the_flows_cap_estimate_sizes_known_models_and_falls_back_for_unknown_ones() -> None:
    policy = {"gpu_types": ["NVIDIA RTX A6000"], "capacity": "on_demand"}
    with pytest.raises(InputError, match="FSDP"):
        cm.cap_estimate(spec(LLAMA_70B, **policy), 1000, PRICES)
    sized = cm.cap_estimate(spec(LLAMA_8B, **policy), 1000, PRICES, train_tokens=600_000)
    unknown = cm.cap_estimate(spec("someone/unknown-model", **policy), 1000, PRICES)
    assert sized.gpu_type == unknown.gpu_type == "NVIDIA RTX A6000"
    assert unknown.hours == pytest.approx((125 * 20.0 + 600) / 3600)  # the model-blind table
    assert sized.hours != unknown.hours


def test_the_estimate_table_shows_the_jobs_gpus_then_the_usual_ones() -> None:
    table = estimate_table(spec(gpu_types=["NVIDIA A40"]), 500, PRICES, train_tokens=300_000)
    rows = [line.split("  ")[0] for line in table.splitlines() if line.startswith("NVIDIA ")]
    assert rows[0] == "NVIDIA A40" and set(cm.ESTIMATE_GPUS) <= set(rows)
