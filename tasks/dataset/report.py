"""The dataset report for people: Markdown for the Prefect UI, one screen for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from brightrun import prepared
from tasks.dataset.balance import balance_markdown, balance_summary

if TYPE_CHECKING:
    from tasks.dataset.prepare import DatasetReport


def render_report_markdown(report: DatasetReport) -> str:
    o = report.options
    lines = [
        f"# Dataset report: {report.source_name}",
        "",
        f"sha256 `{report.source_sha256[:16]}…`, tokenizer `{report.tokenizer}`, "
        f"max_seq_length {o.max_seq_length}, min_quality {o.min_quality:g}, "
        f"validation_fraction {o.validation_fraction:g}, seed {o.seed}",
        "",
        "| | |",
        "|---|---:|",
        f"| conversations | {report.conversations} |",
        f"| training pairs | {report.pairs} |",
        f"| kept targets | {report.kept_targets} |",
    ]
    for reason, count in report.skipped_targets.items():
        lines.append(f"| skipped: {reason.replace('_', ' ')} | {count} |")
    lines += [
        f"| sequences | {report.sequences} |",
        f"| conversations merged into one sequence | {report.merged_conversations} |",
        f"| conversations split (histories disagree) | {report.split_conversations} |",
        f"| over-long sequences windowed | {report.windowed_sequences} |",
        f"| total tokens | {report.total_tokens:,} |",
        f"| trained tokens | {report.trained_tokens:,} |",
        f"| longest sequence | {report.longest_sequence} |",
        "",
        "| split | conversations | examples | tokens | trained tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in (("train", report.train), ("validation", report.validation)):
        lines.append(f"| {name} | {s.conversations} | {s.examples} | {s.tokens:,} | {s.trained_tokens:,} |")
    lines += ["", "| quality score | pairs |", "|---:|---:|"]
    lines += [f"| {score} | {count} |" for score, count in report.quality_histogram.items()]
    if report.history_mismatch_examples:
        lines += ["", "History disagreements (first few):", ""]
        lines += [f"- {m}" for m in report.history_mismatch_examples[:10]]
    if report.too_long_targets:
        lines += ["", "Targets skipped as too long:", ""]
        lines += [f"- {m}" for m in report.too_long_targets[:10]]
    lines += balance_markdown(report.balance)
    return "\n".join(lines) + "\n"


def render_summary(report: DatasetReport, out_dir: Path) -> str:
    """One screen for the CLI."""
    s = report.skipped_targets
    skipped = (
        f"{s.get('null_target', 0)} null, {s.get('below_min_quality', 0)} below min quality, "
        f"{s.get('too_long', 0)} too long"
    )
    return "\n".join(
        [
            f"prepared {report.source_name} -> {out_dir}",
            f"  conversations {report.conversations}, pairs {report.pairs}, "
            f"kept targets {report.kept_targets} (skipped: {skipped})",
            f"  sequences {report.sequences} (merged conversations {report.merged_conversations}, split "
            f"{report.split_conversations}, windowed {report.windowed_sequences})",
            f"  tokens {report.total_tokens:,}, trained {report.trained_tokens:,}, longest "
            f"{report.longest_sequence}",
            f"  train {report.train.conversations} conversations / {report.train.examples} examples, "
            f"validation {report.validation.conversations} / {report.validation.examples}, "
            f"held-out prompts {report.held_out_prompts}",
            "  quality " + ", ".join(f"{k}: {v}" for k, v in report.quality_histogram.items()),
            *balance_summary(report.balance),
            f"  report: {out_dir / prepared.REPORT}",
        ]
    )
