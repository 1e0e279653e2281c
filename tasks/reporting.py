"""What a person watching a training run sees: the Prefect UI, the terminal and the run's logs.

Pure builders that tests call directly (run name, artifact keys, the ETA, the progress line,
the loss-curve SVG and its markdown, the summary, the metrics table) and three I/O edges:

- `RunReporter`: the job's Prefect artifacts. One progress bar and one metrics table and one
  loss-curve picture, each created once and then updated in place (the table and curve at
  most `PUBLISH_POINTS` times a run), the dataset report once, the summary at the end.
  It also hands each heartbeat to the progress sink (the terminal, or the run's logs).
- `ProgressSink`: where progress and the final summary go. `brightrun train` installs a
  terminal sink (cli/progress.py) with `use_progress_sink`; without one, progress goes to
  the run's logs (`LogProgressSink`), a line only when the step changes.
- `TrainerLogForwarder`: the trainer's log lines (`logs/*.jsonl` in the job's storage,
  brightrun/trainer_logs.py) into the flow run's logs, and the whole log as `training.log`.

Reporting never fails a job: a Prefect API hiccup is logged and the training goes on.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

if TYPE_CHECKING:
    from brightrun.protocol import TrainerStatus
    from brightrun.storage import Storage

log = logging.getLogger("brightrun.reporting")
progress_log = logging.getLogger("brightrun.progress")

LIBRARY_LOGGERS = ("transformers", "peft", "trl", "brightrun", "trainer", "tasks", "flows")
OWN_LOGGERS = ("brightrun", "trainer", "tasks", "flows")
TABLE_ROWS = 20
PUBLISH_POINTS = 20  # metrics table and loss curve updates per run, at most (plus the final one)
UNKNOWN_TOTAL_PUBLISH_S = 60.0  # without a step total, refresh them on a clock instead
CURVE_MAX_POINTS = 400  # a week-long run still draws a small SVG
LOG_PROGRESS_EVERY_S = 10.0  # the run-log fallback: a line per step change, at most this often


# ---------------------------------------------------------------- names and keys


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase letters, digits and dashes (what Prefect artifact keys accept)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:max_len].strip("-") or "x"


def short_id(job_id: str) -> str:
    """The first 8 characters of the job id: what `jobs list` shows and a person can type."""
    return slug(job_id, 60).replace("-", "")[:8] or "x"


def model_display_name(base_model: str) -> str:
    """`meta-llama/Meta-Llama-3-8B` -> `Meta-Llama-3-8B`; a local path -> its directory name."""
    return PurePosixPath(base_model.rstrip("/")).name or base_model


def run_name(dataset_name: str, base_model: str, job_id: str) -> str:
    """`train-<dataset>-<base model>-<job id>`: says what runs, in the run list."""
    return f"train-{dataset_name}-{model_display_name(base_model)}-{job_id}"


def artifact_key(job_id: str, what: str) -> str:
    """`job-1a2b3c4d-summary`: the job (short id) and what the artifact is."""
    return f"job-{short_id(job_id)}-{slug(what)}"


# ---------------------------------------------------------------- progress, ETA


def progress_percent(step: int, total_steps: int) -> float:
    if total_steps <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * step / total_steps)), 1)


def estimate_completion(
    step: int, total: int, started_at: datetime, now: datetime, *, start_step: int = 0
) -> datetime | None:
    """When the last step should end, at the step rate seen since `started_at` (when the trainer
    was at `start_step`: 0, or the step a resumed attempt started from). None until a step was
    measured; `now` once every step is done."""
    if total <= 0:
        return None
    if step >= total:
        return now
    done = step - start_step
    elapsed = (now - started_at).total_seconds()
    if done <= 0 or elapsed <= 0:
        return None
    return now + timedelta(seconds=elapsed / done * (total - step))


def format_duration(seconds: float | None) -> str:
    """`42s`, `12m05s`, `3h07m`: how long, at a glance."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class ProgressView:
    """One moment of a training, in the words the terminal, logs and webhook use."""

    job_id: str
    status: str
    phase: str
    step: int
    total_steps: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta: datetime | None = None
    now: datetime | None = None
    attempt: int = 1

    @property
    def percent(self) -> float:
        return progress_percent(self.step, self.total_steps)

    @property
    def remaining_s(self) -> float | None:
        if self.eta is None or self.now is None:
            return None
        return max(0.0, (self.eta - self.now).total_seconds())


def progress_line(view: ProgressView) -> str:
    """`step 9/30 (30%) · epoch 0.60 · loss 2.4512 · eval 2.6001 · 1,234 tok/s · 1m02s elapsed · ETA 2m10s`"""
    if not view.total_steps and not view.step:  # before the first step: what it is doing
        parts = [view.phase.replace("_", " ") or "starting"]
        if view.elapsed_s is not None:
            parts.append(f"{format_duration(view.elapsed_s)} elapsed")
        return " · ".join(parts)
    parts = [f"step {view.step}/{view.total_steps or '?'}"]
    if view.total_steps:
        parts[0] += f" ({view.percent:.0f}%)"
    if view.phase not in ("training", ""):
        parts.append(view.phase.replace("_", " "))
    if view.epoch is not None:
        parts.append(f"epoch {view.epoch:.2f}")
    if view.loss is not None:
        parts.append(f"loss {view.loss:.4f}")
    if view.eval_loss is not None:
        parts.append(f"eval loss {view.eval_loss:.4f}")
    if view.tokens_per_s:
        parts.append(f"{view.tokens_per_s:,.0f} tok/s")
    if view.elapsed_s is not None:
        parts.append(f"{format_duration(view.elapsed_s)} elapsed")
    remaining = view.remaining_s
    parts.append(f"ETA {format_duration(remaining)}" if remaining is not None else "ETA ?")
    if view.attempt > 1:
        parts.append(f"attempt {view.attempt}")
    return " · ".join(parts)


# ---------------------------------------------------------------- the loss curve


def _thin(points: Sequence[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Every k-th point and the last one: the shape survives, the SVG stays small."""
    if len(points) <= max_points:
        return list(points)
    stride = math.ceil(len(points) / max_points)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def loss_curve_svg(
    train: Sequence[tuple[int, float]],
    evaluation: Sequence[tuple[int, float]] = (),
    *,
    title: str = "Training loss",
    width: int = 640,
    height: int = 320,
    max_points: int = CURVE_MAX_POINTS,
) -> str:
    """A self-contained SVG line chart of loss by step (train line, eval points)."""
    train = sorted((s, v) for s, v in train if v is not None and math.isfinite(v))
    evaluation = sorted((s, v) for s, v in evaluation if v is not None and math.isfinite(v))
    train, evaluation = _thin(train, max_points), _thin(evaluation, max_points // 4)
    left, right, top, bottom = 56, 16, 32, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = list(train) + list(evaluation)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no loss recorded</text>')
        parts.append("</svg>")
        return "\n".join(parts)
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * plot_w

    def py(value: float) -> float:
        return top + (1 - (value - y0) / (y1 - y0)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        y = py(value)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for i in range(5):
        step = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{px(step):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{step:.0f}</text>'
        )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">step</text>')
    if train:
        coords = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in train)
        parts.append(
            f'<polyline class="train" fill="none" stroke="#1f77b4" stroke-width="2" points="{coords}"/>'
        )
    if len(evaluation) > 1:
        coords = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in evaluation)
        parts.append(
            '<polyline class="eval-line" fill="none" stroke="#d62728" stroke-dasharray="4 3" '
            f'points="{coords}"/>'
        )
    for s, v in evaluation:
        parts.append(f'<circle class="eval" cx="{px(s):.1f}" cy="{py(v):.1f}" r="4" fill="#d62728"/>')
    legend_y = top + 14
    parts.append(
        f'<text x="{left + plot_w - 4}" y="{legend_y}" text-anchor="end" fill="#1f77b4">train loss</text>'
    )
    if evaluation:
        parts.append(
            f'<text x="{left + plot_w - 4}" y="{legend_y + 14}" text-anchor="end" fill="#d62728">'
            "eval loss</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    """The SVG as a `data:` URI: a picture the Prefect UI shows inline on any storage
    (a `file://` or `s3://` link does nothing in a browser)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def loss_curve_markdown(svg: str, *, job_id: str, stored_uri: str | None = None) -> str:
    lines = [f"![Loss curve of job {job_id}]({svg_data_uri(svg)})", ""]
    lines.append("Train loss (blue line) and eval loss (red points; step 0: before training) by step.")
    if stored_uri:
        lines += ["", f"Stored as `{stored_uri}`."]
    return "\n".join(lines) + "\n"


def curve_points(
    records: Iterator[Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) loss points by step; a step seen in several attempts keeps the latest."""
    train: dict[int, tuple[int, float]] = {}
    evals: dict[int, tuple[int, float]] = {}
    for rec in records:
        step, attempt = rec.get("step"), int(rec.get("attempt") or 1)
        if step is None:
            continue
        for name, into in (("loss", train), ("eval_loss", evals)):
            value = rec.get(name)
            if value is not None and (int(step) not in into or into[int(step)][0] <= attempt):
                into[int(step)] = (attempt, float(value))
    return (
        sorted((s, v) for s, (_, v) in train.items()),
        sorted((s, v) for s, (_, v) in evals.items()),
    )


# ---------------------------------------------------------------- the metrics table


def metrics_table(records: Sequence[Mapping[str, Any]], rows: int = TABLE_ROWS) -> list[dict[str, Any]]:
    """The most recent `rows` metric records, newest first, with rounded columns."""

    def fmt(value: Any, digits: int = 4) -> Any:
        if isinstance(value, float):
            return float(f"{value:.{digits}g}") if math.isfinite(value) else str(value)
        return value

    out = []
    for rec in sorted(records, key=lambda r: (r.get("attempt", 1), r.get("step", 0)), reverse=True)[:rows]:
        out.append(
            {
                "step": rec.get("step"),
                "epoch": fmt(rec.get("epoch"), 3),
                "loss": fmt(rec.get("loss")),
                "eval_loss": fmt(rec.get("eval_loss")),
                "learning_rate": fmt(rec.get("learning_rate"), 3),
                "grad_norm": fmt(rec.get("grad_norm"), 3),
                "tokens_per_s": fmt(rec.get("tokens_per_s"), 3),
                "attempt": rec.get("attempt", 1),
            }
        )
    return out


# ---------------------------------------------------------------- the summary


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


@dataclass(frozen=True)
class RunSummary:
    """The end of a run: what the summary artifact, `summary.md` and the terminal say."""

    job_id: str
    status: str
    base_model: str
    dataset: str
    steps: int | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    baseline_eval_loss: float | None = None  # the trainer's step-0 evaluation, when it made one
    samples: Sequence[Mapping[str, str]] = ()
    cost_usd: float | None = None
    interruptions: int = 0
    train_seconds: float | None = None
    adapter_uri: str | None = None
    summary_uri: str | None = None
    loss_curve_uri: str | None = None
    training_log_uri: str | None = None
    error_message: str | None = None

    @property
    def eval_loss_change(self) -> float | None:
        if self.eval_loss is None or self.baseline_eval_loss is None:
            return None
        return self.eval_loss - self.baseline_eval_loss

    @property
    def baseline_perplexity(self) -> float | None:
        if self.baseline_eval_loss is None or self.baseline_eval_loss > 700:
            return None
        return math.exp(self.baseline_eval_loss)


def next_commands(summary: RunSummary) -> list[str]:
    """What to type next to try the adapter (issue 14's commands), or to look closer."""
    if summary.status == "completed" and summary.adapter_uri:
        return [
            f'brightrun generate {summary.job_id} --prompt "How do I ask for a raise?"',
            f"brightrun chat {summary.job_id}",
            f"brightrun jobs show {summary.job_id}",
        ]
    if summary.status == "failed":
        return [f"brightrun jobs show {summary.job_id}", f"brightrun resume {summary.job_id}"]
    return [f"brightrun jobs show {summary.job_id}"]


def eval_loss_text(summary: RunSummary) -> str:
    text = _num(summary.eval_loss)
    change = summary.eval_loss_change
    if change is not None:
        text += f" ({change:+.4f} from {summary.baseline_eval_loss:.4f} before training)"
    return text


def perplexity_text(summary: RunSummary) -> str:
    text = _num(summary.perplexity)
    if summary.perplexity is not None and summary.baseline_perplexity is not None:
        text += f" (was {summary.baseline_perplexity:.4g})"
    return text


def render_summary_markdown(summary: RunSummary, *, loss_curve: str | None = None) -> str:
    """The summary artifact; `loss_curve` (an SVG) is embedded as a picture when given."""
    s = summary
    lines = [
        f"# Training job {s.job_id}: {s.status}",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{s.base_model}` |",
        f"| Dataset | `{s.dataset}` |",
        f"| Steps | {s.steps if s.steps is not None else 'n/a'} |",
        f"| Eval loss | {eval_loss_text(s)} |",
        f"| Perplexity | {perplexity_text(s)} |",
        f"| Cost | {'n/a' if s.cost_usd is None else f'${s.cost_usd:.4f}'} |",
        f"| Interruptions | {s.interruptions} |",
        f"| Training time | {'n/a' if s.train_seconds is None else f'{s.train_seconds:.1f} s'} |",
        f"| Adapter | `{s.adapter_uri or 'not produced'}` |",
        f"| Loss curve | `{s.loss_curve_uri or 'n/a'}` |",
    ]
    if s.training_log_uri:
        lines.append(f"| Trainer log | `{s.training_log_uri}` |")
    if s.error_message:
        lines += ["", "## Error", "", "```", s.error_message.strip()[:4000], "```"]
    if loss_curve:
        lines += ["", "## Loss", "", f"![Loss curve of job {s.job_id}]({svg_data_uri(loss_curve)})"]
    if s.samples:
        lines += ["", "## Sample replies", ""]
        for i, sample in enumerate(s.samples, 1):
            lines += [f"### Sample {i}", ""]
            for label, key in (("Prompt", "prompt"), ("Reference", "reference"), ("Adapter", "generated")):
                text = (sample.get(key) or "").strip().replace("\n", " ")
                if text:
                    lines.append(f"- **{label}:** {text[:600]}")
            lines.append("")
    commands = next_commands(s)
    lines += ["", "## Next", "", "```", *commands, "```"]
    return "\n".join(lines).rstrip() + "\n"


def summary_markdown(
    *,
    job_id: str,
    status: str,
    base_model: str,
    dataset: str,
    steps: int | None,
    eval_loss: float | None,
    perplexity: float | None,
    samples: Sequence[Mapping[str, str]],
    cost_usd: float | None,
    interruptions: int,
    adapter_uri: str | None,
    loss_curve_uri: str | None,
    train_seconds: float | None = None,
    error_message: str | None = None,
    baseline_eval_loss: float | None = None,
) -> str:
    """`render_summary_markdown` from keyword arguments (the flow's call before `RunSummary`)."""
    return render_summary_markdown(
        RunSummary(
            job_id=job_id,
            status=status,
            base_model=base_model,
            dataset=dataset,
            steps=steps,
            eval_loss=eval_loss,
            perplexity=perplexity,
            baseline_eval_loss=baseline_eval_loss,
            samples=samples,
            cost_usd=cost_usd,
            interruptions=interruptions,
            train_seconds=train_seconds,
            adapter_uri=adapter_uri,
            loss_curve_uri=loss_curve_uri,
            error_message=error_message,
        )
    )


def baseline_eval_loss(records: Sequence[Mapping[str, Any]]) -> float | None:
    """The eval loss the trainer measured at step 0, before any training (None if it did not)."""
    for rec in records:
        if rec.get("step") == 0 and rec.get("eval_loss") is not None:
            return float(rec["eval_loss"])
    return None


# ---------------------------------------------------------------- progress sinks


class ProgressSink(Protocol):
    """Receives a run's progress and its end (cli/progress.py: the terminal)."""

    def on_progress(self, view: ProgressView) -> None: ...
    def on_finish(self, summary: RunSummary) -> None: ...


@dataclass
class LogProgressSink:
    """Without a terminal: a progress line in the run's logs when the step changed (at most one
    per `every_s`), and the summary's key figures at the end."""

    every_s: float = LOG_PROGRESS_EVERY_S
    clock: Callable[[], float] = time.monotonic
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = progress_log
    _step: int | None = None
    _at: float | None = None

    def on_progress(self, view: ProgressView) -> None:
        now = self.clock()
        last_step = view.total_steps > 0 and view.step >= view.total_steps
        if view.step == self._step:
            return
        if self._at is not None and now - self._at < self.every_s and not last_step:
            return
        self._step, self._at = view.step, now
        self.logger.info("job %s: %s", view.job_id, progress_line(view))

    def on_finish(self, summary: RunSummary) -> None:
        self.logger.info(
            "job %s %s: eval loss %s, perplexity %s, %s training, adapter %s",
            summary.job_id,
            summary.status,
            eval_loss_text(summary),
            perplexity_text(summary),
            format_duration(summary.train_seconds),
            summary.adapter_uri or "not produced",
        )


_sink: ProgressSink | None = None
_sink_lock = threading.Lock()


@contextlib.contextmanager
def use_progress_sink(sink: ProgressSink) -> Iterator[ProgressSink]:
    """Send the progress of runs started in this process to `sink` (the CLI's terminal) while
    the block runs. A flow run in another process (a worker, `serve`) logs its progress."""
    global _sink
    with _sink_lock:
        previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        with _sink_lock:
            _sink = previous


def current_progress_sink() -> ProgressSink:
    return _sink if _sink is not None else LogProgressSink()


# ---------------------------------------------------------------- Prefect artifacts


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _in_task_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


@dataclass
class RunReporter:
    """One job's view in the Prefect UI and its progress sink; every call is best-effort.

    The artifacts that grow during a run are created once and then updated in place, so the
    Artifacts tab holds one progress bar, one metrics table and one loss curve per job.
    """

    job_id: str
    enabled: bool = True
    sink: ProgressSink = field(default_factory=current_progress_sink)
    clock: Callable[[], datetime] = _utcnow
    started_at: datetime | None = None
    progress_id: UUID | None = None
    last_progress: float = -1.0
    published: list[str] = field(default_factory=list)
    artifact_ids: dict[str, UUID] = field(default_factory=dict)
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    eval_loss: float | None = None
    last_view: ProgressView | None = None
    _rate_origin: tuple[int, datetime, int] | None = None  # (step, when, attempt) of the rate
    _published_step: int | None = None
    _published_at: float | None = None
    _dataset_reported: bool = False

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # the UI is a view; it must never stop a training
            log.warning("could not publish %s artifact: %s", what, exc)
            return None
        self.published.append(what)
        return result

    # -- heartbeat: progress bar, ETA, the sink

    def heartbeat(self, status: TrainerStatus, job_status: str = "training") -> ProgressView:
        """The trainer's heartbeat: returns what it means (step, ETA...) for the registry and
        the webhook, moves the progress bar and tells the sink."""
        now = self.clock()
        phase = str(getattr(status.phase, "value", status.phase))
        origin = self._rate_origin
        # The step rate is measured from the first heartbeat of this attempt in training:
        # model loading and a resume's restart are not steps.
        if phase == "training" and (origin is None or origin[2] != status.attempt or status.step < origin[0]):
            origin = self._rate_origin = (status.step, now, status.attempt)
        eta = None
        if origin is not None:
            eta = estimate_completion(status.step, status.total_steps, origin[1], now, start_step=origin[0])
        assert self.started_at is not None
        view = ProgressView(
            job_id=self.job_id,
            status=job_status,
            phase=phase,
            step=status.step,
            total_steps=status.total_steps,
            epoch=status.epoch,
            loss=status.loss,
            eval_loss=self.eval_loss,
            tokens_per_s=status.tokens_per_s,
            elapsed_s=(now - self.started_at).total_seconds(),
            eta=eta,
            now=now,
            attempt=status.attempt,
        )
        self.last_view = view
        self.progress(status.step, status.total_steps)
        try:
            self.sink.on_progress(view)
        except Exception as exc:  # a broken terminal must not stop a training
            log.warning("progress display failed: %s", exc)
        return view

    def progress(self, step: int, total_steps: int) -> None:
        """The progress bar (0-100 by optimizer step), updated in place."""
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        value = progress_percent(step, total_steps)
        if value == self.last_progress:
            return
        if self.progress_id is None:
            self.progress_id = self._safe(
                "progress",
                create_progress_artifact,
                value,
                key=artifact_key(self.job_id, "progress"),
                description=f"Training progress of job {self.job_id} (% of optimizer steps)",
            )
        else:
            self._safe("progress", update_progress_artifact, self.progress_id, value)
        self.last_progress = value

    # -- artifacts created once, updated in place

    def _put(self, what: str, kind: str, data: str, description: str, *, create: bool = True) -> None:
        """Create the artifact `what` the first time (unless `create` is false), update its data
        in place afterwards.

        `data` is what the API stores (markdown text, a table as JSON). It attaches to the
        current task run when there is one: the flow-level section of the run's Artifacts
        tab (shown first) is kept for the summary.
        """

        def create_artifact() -> UUID:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactCreate
            from prefect.utilities.context import get_task_and_flow_run_ids

            task_run_id, flow_run_id = get_task_and_flow_run_ids()
            request = ArtifactCreate(
                type=kind,
                key=artifact_key(self.job_id, what),
                description=description,
                data=data,
                task_run_id=task_run_id,
                flow_run_id=flow_run_id,
            )
            with get_client(sync_client=True) as client:
                return UUID(str(client.create_artifact(request).id))

        def update(artifact_id: UUID) -> None:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.actions import ArtifactUpdate

            with get_client(sync_client=True) as client:
                client.update_artifact(artifact_id=artifact_id, artifact=ArtifactUpdate(data=data))

        existing = self.artifact_ids.get(what)
        if existing is None and not create:
            return
        if existing is None:
            created = self._safe(what, create_artifact)
            if created is not None:
                self.artifact_ids[what] = created
        else:
            self._safe(what, update, existing)

    def dataset_report(self, markdown: str) -> None:
        """The dataset report, once per job (a second call, e.g. a resumed stage, is ignored)."""
        if self._dataset_reported:
            return
        self._dataset_reported = True

        def publish() -> None:
            self._put("dataset-report", "markdown", markdown, f"Dataset report of job {self.job_id}")

        if self.enabled and _in_flow_run() and not _in_task_run():
            # From the flow body, through a task of its own: it then shows in the run graph, and
            # the flow-level artifacts (listed first in the UI) are the summary alone.
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            try:
                task(name="dataset-report", cache_policy=NO_CACHE)(publish)()
            except Exception as exc:
                log.warning("could not publish dataset-report artifact: %s", exc)
            return
        publish()

    def metrics(self, records: Sequence[Mapping[str, Any]], *, final: bool = False) -> None:
        """Take metric records (any overlap with earlier calls is fine); the table and the loss
        curve are republished at most `PUBLISH_POINTS` times a run, and when `final`."""
        top_step = None
        for rec in records:
            row = dict(rec)
            step = row.get("step")
            if step is None:
                continue
            self.records[(int(row.get("attempt") or 1), int(step))] = {
                **self.records.get((int(row.get("attempt") or 1), int(step)), {}),
                **{k: v for k, v in row.items() if v is not None},
            }
            if row.get("eval_loss") is not None:
                self.eval_loss = float(row["eval_loss"])
            top_step = int(step) if top_step is None else max(top_step, int(step))
        if self._due(top_step) or (final and self.records):
            self._published_step = top_step if top_step is not None else self._published_step
            self._published_at = time.monotonic()
            # The last redraw (from the flow, after the training task) only updates: a new
            # artifact there would sit beside the summary at the top of the Artifacts tab.
            self._publish_metrics(create=not final)

    def _due(self, top_step: int | None) -> bool:
        if top_step is None:
            return False
        if self._published_step is None:
            return True
        total = self.last_view.total_steps if self.last_view else 0
        if total > 0:
            return top_step - self._published_step >= max(1, math.ceil(total / PUBLISH_POINTS))
        return self._published_at is None or time.monotonic() - self._published_at >= UNKNOWN_TOTAL_PUBLISH_S

    def _publish_metrics(self, *, create: bool = True) -> None:
        rows = list(self.records.values())
        table = metrics_table(rows)
        if table:
            import json

            self._put(
                "metrics",
                "table",
                json.dumps(table),
                f"Latest training metrics of job {self.job_id} (newest first)",
                create=create,
            )
        self.loss_curve(create=create)

    def loss_curve(self, stored_uri: str | None = None, *, create: bool = True) -> str:
        """The loss curve as a picture in the UI (created once, redrawn in place); returns the SVG."""
        train, evals = curve_points(list(self.records.values()))
        svg = loss_curve_svg(train, evals, title=f"Loss of job {short_id(self.job_id)}")
        self._put(
            "loss-curve",
            "markdown",
            loss_curve_markdown(svg, job_id=self.job_id, stored_uri=stored_uri),
            f"Loss curve of job {self.job_id} (train and eval loss by step)",
            create=create,
        )
        return svg

    def summary(self, markdown: str) -> None:
        self._put("summary", "markdown", markdown, f"Result of training job {self.job_id}")

    def finish(self, summary: RunSummary, *, loss_curve: str | None = None) -> str:
        """The end of the run: the summary artifact and the sink's final words; returns the
        summary markdown (for `summary.md`)."""
        markdown = render_summary_markdown(summary, loss_curve=loss_curve)
        self.summary(markdown)
        try:
            self.sink.on_finish(summary)
        except Exception as exc:
            log.warning("progress display failed: %s", exc)
        return markdown

    def link(self, what: str, uri: str, text: str) -> None:
        from prefect.artifacts import create_link_artifact

        link = uri if "://" in uri else f"file://{uri}"
        self._safe(
            what,
            create_link_artifact,
            link,
            link_text=text,
            key=artifact_key(self.job_id, what),
            description=text,
        )


# ---------------------------------------------------------------- run logs


def attach_library_loggers(names: Sequence[str] = LIBRARY_LOGGERS) -> None:
    """Send library log records (transformers, peft...) to the Prefect run logs.

    Same effect as PREFECT_LOGGING_EXTRA_LOGGERS, without depending on it being set
    before Prefect configured logging: copy the handlers of `prefect.extra`.
    """
    handlers = logging.getLogger("prefect.extra").handlers
    for name in names:
        logger = logging.getLogger(name)
        # Our own loggers speak at INFO; libraries keep their level (transformers: WARNING).
        if name in OWN_LOGGERS and logger.level in (logging.NOTSET, logging.WARNING):
            logger.setLevel(logging.INFO)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def run_log_only_logger(name: str = "brightrun.trainer_log") -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records go to the current Prefect run's logs (the API) but not to this
    process's console: the trainer's own lines belong in the UI, not between the terminal's
    progress lines. Outside a run it is an ordinary logger."""
    logger = logging.getLogger(name)
    extra: dict[str, Any] = {}
    try:
        from prefect.logging.handlers import APILogHandler
        from prefect.logging.loggers import get_run_logger

        run_logger = get_run_logger()
        extra = dict(getattr(run_logger, "extra", None) or {})
        api = [h for h in logging.getLogger("prefect.flow_runs").handlers if isinstance(h, APILogHandler)]
        if api:
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            for handler in api:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
    except Exception:  # not in a run (a test, a script): plain logging
        pass
    return logging.LoggerAdapter(logger, extra)


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


@dataclass
class TrainerLogForwarder:
    """Forwards the trainer's log chunks (brightrun/trainer_logs.py) into the run's logs.

    `poll()` reads the chunks it has not seen (cheap: one list call when nothing is new);
    `running(interval_s)` does that on a thread while the training runs; `publish()` joins
    every chunk into `training.log` and returns its URI (call it on every exit path).
    """

    storage: Storage
    job_id: str
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("brightrun.trainer_log")
    )
    seen: set[str] = field(default_factory=set)
    forwarded: int = 0

    @property
    def job_prefix(self) -> str:
        return f"jobs/{self.job_id}"

    def poll(self) -> int:
        from brightrun.trainer_logs import new_log_chunks, read_log_chunk

        count = 0
        try:
            keys = new_log_chunks(self.storage, self.job_prefix, self.seen)
        except Exception as exc:
            log.debug("trainer log chunks not listed: %s", exc)
            return 0
        for key in keys:
            try:
                records = read_log_chunk(self.storage, key)
            except Exception as exc:  # half-visible: next poll
                log.debug("trainer log chunk %s not read yet: %s", key, exc)
                continue
            self.seen.add(key)
            for record in records:
                level = _LEVELS.get(str(record.get("level", "INFO")).upper(), logging.INFO)
                self.logger.log(level, "%s: %s", record.get("name", "trainer"), record.get("msg", ""))
                count += 1
        self.forwarded += count
        return count

    @contextlib.contextmanager
    def running(self, interval_s: float = 2.0) -> Iterator[TrainerLogForwarder]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                self.poll()

        thread = threading.Thread(target=loop, name="trainer-log-forwarder", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=30)
            self.poll()  # the last lines (a failure's traceback) before the run ends

    def publish(self) -> str | None:
        """`training.log` (every chunk, in order) under the job prefix; its URI or None."""
        from brightrun.trainer_logs import join_log_chunks

        try:
            return join_log_chunks(self.storage, self.job_prefix)
        except Exception as exc:
            log.warning("job %s: trainer log not stored (%s)", self.job_id, exc)
            return None


@contextlib.contextmanager
def forward_trainer_logs(
    storage: Storage, job_id: str, interval_s: float = 2.0
) -> Iterator[TrainerLogForwarder]:
    """`with forward_trainer_logs(storage, job_id):` around the training: the trainer's lines
    appear in this run's logs as it runs (not on the console); `.publish()` after it."""
    forwarder = TrainerLogForwarder(storage, job_id, run_log_only_logger())
    with forwarder.running(interval_s):
        yield forwarder


# ---------------------------------------------------------------- the UI's run form


def run_form_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A flow's parameter schema as the Prefect UI's run form should show it.

    An optional parameter (`str | None = None`) renders as a `str`/`None` choice stuck on
    None with 'Property is type "None"' under it; here it is a plain optional field (left
    empty, it is not sent, so the flow gets its default). Inside a section (lora, training...)
    a prefilled default would be sent back and override the preset, so the default moves
    into the field's description instead; booleans keep theirs (an untouched checkbox is
    sent as false, and no preset sets a boolean).
    """
    import copy
    import json

    out = copy.deepcopy(dict(schema))
    for prop in out.get("properties", {}).values():
        variants = prop.get("anyOf")
        if variants and {"type": "null"} in variants and "default" in prop and prop["default"] is None:
            rest = [v for v in variants if v != {"type": "null"}]
            del prop["anyOf"], prop["default"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
    for definition in out.get("definitions", {}).values():
        for field_schema in definition.get("properties", {}).values():
            if "default" not in field_schema or field_schema.get("type") == "boolean":
                continue
            default = field_schema.pop("default")
            shown = "none" if default is None else json.dumps(default)
            field_schema["description"] = f"{field_schema.get('description', '')} (default {shown})".strip()
    return out


def with_run_form_schema(deployment: Any) -> Any:
    """`flow.to_deployment(...)` with `run_form_schema` applied (for `serve` and registration)."""
    from prefect.utilities.callables import ParameterSchema

    current = getattr(deployment, "_parameter_openapi_schema", None)
    if current is None:  # a Prefect without this attribute: the plain form is still usable
        log.warning("run form schema left as Prefect made it (no _parameter_openapi_schema)")
        return deployment
    deployment._parameter_openapi_schema = ParameterSchema(
        **run_form_schema(current.model_dump_for_openapi())
    )
    return deployment
