"""What the Prefect UI shows for a training run.

Pure builders (run name, artifact keys, the loss-curve SVG, the summary markdown, the
metrics table) that tests call directly, and `RunReporter`, which publishes them as
Prefect artifacts: a progress bar by training step, the dataset report, a live table of
recent metrics, the final summary and a link to the loss curve stored next to the adapter.
Reporting never fails a job: a Prefect API hiccup is logged and the training goes on.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

log = logging.getLogger("brightrun.reporting")

LIBRARY_LOGGERS = ("transformers", "peft", "trl", "brightrun", "trainer", "tasks", "flows")
OWN_LOGGERS = ("brightrun", "trainer", "tasks", "flows")
TABLE_ROWS = 20


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase letters, digits and dashes (what Prefect artifact keys accept)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:max_len].strip("-") or "x"


def model_display_name(base_model: str) -> str:
    """`meta-llama/Meta-Llama-3-8B` -> `Meta-Llama-3-8B`; a local path -> its directory name."""
    return PurePosixPath(base_model.rstrip("/")).name or base_model


def run_name(dataset_name: str, base_model: str, job_id: str) -> str:
    """`train-<dataset>-<base model>-<job id>`: says what runs, in the run list."""
    return f"train-{dataset_name}-{model_display_name(base_model)}-{job_id}"


def artifact_key(job_id: str, what: str) -> str:
    return f"job-{slug(job_id, 60)}-{what}"


def progress_percent(step: int, total_steps: int) -> float:
    if total_steps <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * step / total_steps)), 1)


def loss_curve_svg(
    train: Sequence[tuple[int, float]],
    evaluation: Sequence[tuple[int, float]] = (),
    *,
    title: str = "Training loss",
    width: int = 640,
    height: int = 320,
) -> str:
    """A self-contained SVG line chart of loss by step (train line, eval points)."""
    train = [(s, v) for s, v in train if v is not None and math.isfinite(v)]
    evaluation = [(s, v) for s, v in evaluation if v is not None and math.isfinite(v)]
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
        coords = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in sorted(train))
        parts.append(
            f'<polyline class="train" fill="none" stroke="#1f77b4" stroke-width="2" points="{coords}"/>'
        )
    for s, v in sorted(evaluation):
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


def metrics_table(records: Sequence[dict[str, Any]], rows: int = TABLE_ROWS) -> list[dict[str, Any]]:
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
                "learning_rate": fmt(rec.get("learning_rate"), 3),
                "grad_norm": fmt(rec.get("grad_norm"), 3),
                "tokens_per_s": fmt(rec.get("tokens_per_s"), 3),
                "attempt": rec.get("attempt", 1),
            }
        )
    return out


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def summary_markdown(
    *,
    job_id: str,
    status: str,
    base_model: str,
    dataset: str,
    steps: int | None,
    eval_loss: float | None,
    perplexity: float | None,
    samples: Sequence[dict[str, str]],
    cost_usd: float | None,
    interruptions: int,
    adapter_uri: str | None,
    loss_curve_uri: str | None,
    train_seconds: float | None = None,
    error_message: str | None = None,
) -> str:
    lines = [
        f"# Training job {job_id}: {status}",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{base_model}` |",
        f"| Dataset | `{dataset}` |",
        f"| Steps | {steps if steps is not None else 'n/a'} |",
        f"| Eval loss | {_num(eval_loss)} |",
        f"| Perplexity | {_num(perplexity)} |",
        f"| Cost | {'n/a' if cost_usd is None else f'${cost_usd:.4f}'} |",
        f"| Interruptions | {interruptions} |",
        f"| Training time | {'n/a' if train_seconds is None else f'{train_seconds:.1f} s'} |",
        f"| Adapter | `{adapter_uri or 'not produced'}` |",
        f"| Loss curve | `{loss_curve_uri or 'n/a'}` |",
    ]
    if error_message:
        lines += ["", "## Error", "", "```", error_message.strip()[:4000], "```"]
    if samples:
        lines += ["", "## Sample replies", ""]
        for i, sample in enumerate(samples, 1):
            lines += [f"### Sample {i}", ""]
            for label, key in (("Prompt", "prompt"), ("Reference", "reference"), ("Adapter", "generated")):
                text = (sample.get(key) or "").strip().replace("\n", " ")
                if text:
                    lines.append(f"- **{label}:** {text[:600]}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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


@dataclass
class RunReporter:
    """Publishes one job's artifacts to the Prefect API; every call is best-effort."""

    job_id: str
    enabled: bool = True
    progress_id: UUID | None = None
    last_progress: float = -1.0
    published: list[str] = field(default_factory=list)

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

    def progress(self, step: int, total_steps: int) -> None:
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
                description=f"Training progress of job {self.job_id} (by optimizer step)",
            )
        else:
            self._safe("progress", update_progress_artifact, self.progress_id, value)
        self.last_progress = value

    def dataset_report(self, markdown: str) -> None:
        from prefect.artifacts import create_markdown_artifact

        self._safe(
            "dataset-report",
            create_markdown_artifact,
            markdown,
            key=artifact_key(self.job_id, "dataset-report"),
            description=f"Dataset report of job {self.job_id}",
        )

    def metrics(self, records: Sequence[dict[str, Any]]) -> None:
        from prefect.artifacts import create_table_artifact

        table = metrics_table(records)
        if table:
            # Same key each time: the artifact page shows the newest version (a live table).
            self._safe(
                "metrics",
                create_table_artifact,
                table,
                key=artifact_key(self.job_id, "metrics"),
                description=f"Recent training metrics of job {self.job_id} (newest first)",
            )

    def summary(self, markdown: str) -> None:
        from prefect.artifacts import create_markdown_artifact

        self._safe(
            "summary",
            create_markdown_artifact,
            markdown,
            key=artifact_key(self.job_id, "summary"),
            description=f"Result of training job {self.job_id}",
        )

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
