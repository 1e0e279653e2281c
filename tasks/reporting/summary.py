"""The end of a run in words: what the summary artifact, `summary.md` and the terminal say."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.reporting.loss_curve import svg_data_uri


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


def baseline_eval_loss(records: Sequence[Mapping[str, Any]]) -> float | None:
    """The eval loss the trainer measured at step 0, before any training (None if it did not)."""
    for rec in records:
        if rec.get("step") == 0 and rec.get("eval_loss") is not None:
            return float(rec["eval_loss"])
    return None
