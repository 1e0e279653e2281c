"""What the Prefect UI shows: run names, artifact keys, the SVG loss curve, summary, table."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from tasks.reporting.loss_curve import loss_curve_svg
from tasks.reporting.metrics_table import metrics_table
from tasks.reporting.names import artifact_key, run_name
from tasks.reporting.progress import progress_percent
from tasks.reporting.summary import RunSummary, render_summary_markdown

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
    text = render_summary_markdown(
        RunSummary(
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


# ---------------------------------------------------------------- issue 13: see the run

from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from brightrun.protocol import TrainerPhase, TrainerStatus  # noqa: E402
from tasks.reporting.loss_curve import curve_points, loss_curve_markdown  # noqa: E402
from tasks.reporting.names import short_id  # noqa: E402
from tasks.reporting.prefect_artifacts import PUBLISH_POINTS, RunReporter  # noqa: E402
from tasks.reporting.progress import LogProgressSink, ProgressView, estimate_completion, progress_line  # noqa: E402

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_artifact_keys_name_the_job_by_its_short_id() -> None:
    job = "1a2b3c4d-aaaa-bbbb-cccc-1234567890ab"
    assert short_id(job) == "1a2b3c4d"
    assert artifact_key(job, "summary") == "job-1a2b3c4d-summary"
    assert artifact_key(job, "loss-curve") == "job-1a2b3c4d-loss-curve"


def test_estimate_completion_from_the_step_rate() -> None:
    # 10 steps in 5 minutes: the 30 left take 15 more.
    assert estimate_completion(10, 40, T0, T0 + timedelta(minutes=5)) == T0 + timedelta(minutes=20)
    # A resumed attempt measures from the step it started at, not from 0.
    eta = estimate_completion(30, 40, T0, T0 + timedelta(minutes=5), start_step=20)
    assert eta == T0 + timedelta(minutes=10)
    assert estimate_completion(0, 40, T0, T0 + timedelta(minutes=1)) is None  # no step measured yet
    assert estimate_completion(5, 0, T0, T0 + timedelta(minutes=1)) is None  # total unknown
    assert estimate_completion(40, 40, T0, T0 + timedelta(minutes=9)) == T0 + timedelta(minutes=9)


def test_progress_line_has_what_a_watcher_asks() -> None:
    view = ProgressView(
        job_id="j",
        status="training",
        phase="training",
        step=9,
        total_steps=30,
        epoch=0.6,
        loss=2.45123,
        eval_loss=2.6,
        eval_step=8,
        tokens_per_s=1234.5,
        elapsed_s=62,
        eta=T0 + timedelta(seconds=130),
        now=T0,
    )
    line = progress_line(view)
    for part in ("step 9/30 (30%)", "epoch 0.60", "loss 2.4512", "eval loss 2.6000 @ step 8", "1,234 tok/s"):
        assert part in line
    baseline_only = ProgressView(
        job_id="j", status="training", phase="training", step=3, total_steps=30, eval_loss=3.1, eval_step=0
    )
    assert "eval" not in progress_line(baseline_only)  # the step-0 value is not the current one
    assert "1m02s elapsed" in line and "ETA 2m10s" in line
    assert "ETA ?" in progress_line(
        ProgressView(job_id="j", status="training", phase="training", step=0, total_steps=30)
    )
    loading = ProgressView(
        job_id="j", status="queued", phase="loading_model", step=0, total_steps=0, elapsed_s=3
    )
    assert progress_line(loading) == "loading model · 3s elapsed"


def test_loss_curve_is_an_inline_picture_and_stays_small() -> None:
    import base64

    svg = loss_curve_svg([(s, 3.0 - s / 10_000) for s in range(10_000)], [(0, 3.1), (5000, 2.8)])
    line = ET.fromstring(svg).find(f"{SVG}polyline")
    assert line is not None and len(line.attrib["points"].split()) <= 401
    markdown = loss_curve_markdown(svg, job_id="j", stored_uri="s3://b/jobs/j/loss_curve.svg")
    uri = re.search(r"\]\((data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)\)", markdown)
    assert uri is not None
    assert base64.b64decode(uri.group(1).split(",", 1)[1]).decode() == svg
    assert "s3://b/jobs/j/loss_curve.svg" in markdown


def test_curve_points_keep_the_latest_attempt_of_a_step() -> None:
    train, evals = curve_points(
        [
            {"step": 0, "eval_loss": 3.0, "attempt": 1},
            {"step": 1, "loss": 2.9, "attempt": 1},
            {"step": 2, "loss": 2.8, "attempt": 1},
            {"step": 2, "loss": 2.7, "attempt": 2},  # redone after an interruption
            {"step": 3, "loss": 2.6, "attempt": 2},
        ]
    )
    assert train == [(1, 2.9), (2, 2.7), (3, 2.6)]
    assert evals == [(0, 3.0)]


class _RecordingReporter(RunReporter):
    """Records what would be sent to the Prefect API (the API itself: tests/integration)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[tuple[str, str]] = []

    def _put(self, what: str, kind: str, data: str, description: str, *, create: bool = True) -> None:
        self.puts.append((what, data))

    def progress(self, step: int, total_steps: int) -> None:
        self.puts.append(("progress", str(step)))


class _ListSink:
    def __init__(self) -> None:
        self.views: list[ProgressView] = []
        self.summaries: list[RunSummary] = []

    def on_progress(self, view: ProgressView) -> None:
        self.views.append(view)

    def on_finish(self, summary: RunSummary) -> None:
        self.summaries.append(summary)


def test_metrics_table_and_curve_are_published_a_bounded_number_of_times() -> None:
    now = [T0]
    reporter = _RecordingReporter("job-x", sink=_ListSink(), clock=lambda: now[0])
    total = 1000
    for step in range(1, total + 1):
        if step % 7 == 0:  # heartbeats and metric batches arrive at their own pace
            now[0] += timedelta(seconds=7)
            reporter.heartbeat(
                TrainerStatus(phase=TrainerPhase.training, attempt=1, step=step, total_steps=total)
            )
        if step % 3 == 0:
            reporter.metrics(
                [{"step": s, "loss": 3.0 - s / 1000, "attempt": 1} for s in range(step - 2, step + 1)]
            )
    reporter.metrics([], final=True)
    tables = [data for what, data in reporter.puts if what == "metrics"]
    curves = [data for what, data in reporter.puts if what == "loss-curve"]
    assert 2 <= len(tables) <= PUBLISH_POINTS + 2
    assert len(curves) == len(tables)
    assert '"step": 999' in tables[-1]  # the final table holds the newest rows


def test_heartbeat_gives_the_eta_and_tells_the_sink() -> None:
    now = [T0]
    sink = _ListSink()
    reporter = _RecordingReporter("job-x", sink=sink, clock=lambda: now[0])
    loading = reporter.heartbeat(TrainerStatus(phase=TrainerPhase.loading_model, attempt=1, total_steps=40))
    assert loading.eta is None
    reporter.heartbeat(TrainerStatus(phase=TrainerPhase.training, attempt=1, step=0, total_steps=40))
    now[0] += timedelta(minutes=5)
    reporter.metrics([{"step": 0, "eval_loss": 3.2, "attempt": 1}])
    view = reporter.heartbeat(
        TrainerStatus(phase=TrainerPhase.training, attempt=1, step=10, total_steps=40, loss=2.5, epoch=0.25)
    )
    assert view.eta == T0 + timedelta(minutes=20)
    assert view.eval_loss == 3.2 and view.elapsed_s == 300
    assert [v.step for v in sink.views] == [0, 0, 10]
    summary = RunSummary(job_id="job-x", status="completed", base_model="m", dataset="d", eval_loss=2.0)
    reporter.finish(summary)
    assert sink.summaries == [summary]
    assert any(what == "summary" for what, _ in reporter.puts)


def test_log_sink_writes_a_line_only_when_the_step_changes() -> None:
    import logging

    # A logger of its own with a handler that keeps every record it is given: what the sink
    # emits, independent of which handlers other tests left on the shared loggers.
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(f"test.progress.{id(records)}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    clock = [0.0]
    sink = LogProgressSink(every_s=10.0, clock=lambda: clock[0], logger=logger)
    for t, step in [(0, 1), (1, 1), (11, 1), (12, 2), (15, 3), (23, 4), (24, 50)]:
        clock[0] = t
        sink.on_progress(
            ProgressView(job_id="j", status="training", phase="training", step=step, total_steps=50)
        )
    steps = [re.search(r"step (\d+)/", r.getMessage()).group(1) for r in records]  # type: ignore[union-attr]
    assert steps == ["1", "2", "4", "50"]  # same step never twice; at most one per 10 s; the last step always


def test_summary_shows_baseline_change_curve_and_next_commands() -> None:
    summary = RunSummary(
        job_id="1a2b3c4d-aaaa-bbbb-cccc-1234567890ab",
        status="completed",
        base_model="org/m",
        dataset="sample",
        steps=12,
        eval_loss=2.5,
        perplexity=math.exp(2.5),
        baseline_eval_loss=3.0,
        adapter_uri="/data/jobs/x/adapter",
    )
    text = render_summary_markdown(summary, loss_curve=loss_curve_svg([(1, 3.0), (2, 2.5)]))
    assert "2.5 (-0.5000 from 3.0000 before training)" in text
    assert "(was 20.09)" in text
    assert "![Loss curve of job" in text and "data:image/svg+xml;base64," in text
    assert f"brightrun chat {summary.job_id}" in text


def test_trainer_log_lines_travel_through_storage(tmp_path: Path, caplog: Any) -> None:
    import logging

    from brightrun.storage import LocalStorage
    from brightrun.trainer_logs import StorageLogHandler
    from tasks.reporting.run_logs import TrainerLogForwarder

    root = LocalStorage(tmp_path / "store")
    job_storage = LocalStorage(tmp_path / "store" / "jobs" / "j1")  # the trainer's view: its job prefix
    handler = StorageLogHandler(job_storage, attempt=2, interval_s=3600)
    trainer_log = logging.getLogger("trainer.test")
    trainer_log.addHandler(handler)
    trainer_log.setLevel(logging.INFO)
    forwarder = TrainerLogForwarder(root, "j1", logging.getLogger("brightrun.trainer_log.test"))
    try:
        trainer_log.info("step %d/%d loss %.4f", 1, 4, 2.5)
        assert forwarder.poll() == 0  # buffered until the interval or an error
        try:
            raise ValueError("bad batch")
        except ValueError:
            trainer_log.exception("job j1 failed")  # an error is shipped at once, with its traceback
        with caplog.at_level(logging.INFO, logger="brightrun.trainer_log.test"):
            assert forwarder.poll() == 2
            assert forwarder.poll() == 0  # each chunk once
        forwarded = [r for r in caplog.records if r.name == "brightrun.trainer_log.test"]
        assert forwarded[0].getMessage() == "trainer.test: step 1/4 loss 2.5000"
        assert forwarded[1].levelname == "ERROR" and "ValueError: bad batch" in forwarded[1].getMessage()
        trainer_log.warning("after the failure")
        handler.close()
        uri = forwarder.publish()
    finally:
        trainer_log.removeHandler(handler)
    assert uri is not None and uri.endswith("jobs/j1/training.log")
    text = (tmp_path / "store" / "jobs" / "j1" / "training.log").read_text()
    assert text.index("step 1/4") < text.index("bad batch") < text.index("after the failure")


def test_the_pure_renderers_import_without_prefect() -> None:
    """The names, progress and renderer modules are plain functions: a script or the terminal
    can draw a summary or a loss curve without loading Prefect."""
    import subprocess
    import sys

    modules = ["names", "progress", "loss_curve", "metrics_table", "summary"]
    code = "; ".join(
        ["import sys", *(f"import tasks.reporting.{m}" for m in modules), "print('prefect' in sys.modules)"]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
