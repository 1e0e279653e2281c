"""The loss curve: points from metric records, a self-contained SVG, and its markdown."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any

CURVE_MAX_POINTS = 400  # a week-long run still draws a small SVG


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
