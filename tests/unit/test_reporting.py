"""What the Prefect UI shows: run names, artifact keys, the SVG loss curve, summary, table."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from tasks.reporting import (
    artifact_key,
    loss_curve_svg,
    metrics_table,
    progress_percent,
    run_name,
    summary_markdown,
)

SVG = "{http://www.w3.org/2000/svg}"


def test_run_name_says_what_runs() -> None:
    name = run_name("brightrun-sample", "meta-llama/Meta-Llama-3-8B", "1234abcd")
    assert name == "train-brightrun-sample-Meta-Llama-3-8B-1234abcd"
    assert run_name("d", "/home/x/models/tiny-llama/", "j") == "train-d-tiny-llama-j"


def test_artifact_keys_are_what_prefect_accepts() -> None:
    key = artifact_key("6F1C2D3E-AAAA-bbbb-cccc-1234567890ab", "dataset-report")
    assert re.fullmatch(r"[a-z0-9-]+", key)
    assert key.endswith("-dataset-report")


def test_progress_percent_is_clamped() -> None:
    assert progress_percent(0, 0) == 0.0
    assert progress_percent(5, 20) == 25.0
    assert progress_percent(30, 20) == 100.0


def test_loss_curve_svg_is_valid_and_plots_every_point() -> None:
    train = [(1, 3.0), (2, 2.5), (3, 2.1), (4, float("nan")), (5, 1.7)]
    svg = loss_curve_svg(train, [(5, 1.9)])
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    line = root.find(f"{SVG}polyline")
    assert line is not None
    coords = [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]
    assert len(coords) == 4  # the NaN is dropped, not drawn
    xs = [x for x, _ in coords]
    ys = [y for _, y in coords]
    assert xs == sorted(xs)
    assert ys == sorted(ys)  # loss going down is drawn going down (SVG y grows downwards)
    assert len(root.findall(f"{SVG}circle")) == 1
    assert not any(math.isnan(v) for v in xs + ys)


def test_loss_curve_svg_without_points() -> None:
    root = ET.fromstring(loss_curve_svg([]))
    assert "no loss recorded" in "".join(root.itertext())


def test_metrics_table_newest_first_and_bounded() -> None:
    records = [{"step": s, "epoch": s / 10, "loss": 3.0 - s / 100, "attempt": 1} for s in range(1, 51)]
    records += [{"step": 51, "loss": 1.0, "attempt": 2}]
    table = metrics_table(records, rows=5)
    assert [r["step"] for r in table] == [51, 50, 49, 48, 47]
    assert table[0]["attempt"] == 2


def test_summary_markdown_has_what_a_user_asks_after() -> None:
    text = summary_markdown(
        job_id="j1",
        status="completed",
        base_model="org/m",
        dataset="sample",
        steps=12,
        eval_loss=2.5,
        perplexity=math.exp(2.5),
        samples=[{"prompt": "hi", "reference": "hello", "generated": "hey"}],
        cost_usd=0.0123,
        interruptions=2,
        adapter_uri="s3://b/jobs/j1/adapter",
        loss_curve_uri="s3://b/jobs/j1/loss_curve.svg",
    )
    for expected in (
        "completed",
        "Eval loss | 2.5",
        "12.18",
        "$0.0123",
        "Interruptions | 2",
        "s3://b/jobs/j1/adapter",
        "loss_curve.svg",
        "**Adapter:** hey",
    ):
        assert expected in text


def test_trainer_phases_walk_the_job_lifecycle_in_order() -> None:
    from tasks.job import statuses_for_phase

    assert statuses_for_phase("loading_model", "preprocessing") == []
    assert statuses_for_phase("training", "preprocessing") == ["model_loaded", "training"]
    assert statuses_for_phase("checkpointing", "model_loaded") == ["training"]
    assert statuses_for_phase("training", "training") == []
    assert statuses_for_phase("completed", "training") == []  # terminal: the flow records it
    assert statuses_for_phase("training", "cancelled") == []
