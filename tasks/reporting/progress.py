"""Where a run stands: percent, ETA, the one-line progress, and where that line goes.

`ProgressSink` receives progress and the final summary. `brightrun train` installs a terminal
sink (cli/progress.py) with `use_progress_sink`; without one, progress goes to the run's logs
(`LogProgressSink`), a line only when the step changes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from tasks.reporting.summary import RunSummary, eval_loss_text, perplexity_text

progress_log = logging.getLogger("brightrun.progress")

LOG_PROGRESS_EVERY_S = 10.0  # the run-log fallback: a line per step change, at most this often


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
    eval_step: int | None = None  # the step `eval_loss` was measured at
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
    """`step 9/30 (30%) · epoch 0.60 · loss 2.4512 · eval loss 2.6001 @ step 8 · 1,234 tok/s ·
    1m02s elapsed · ETA 2m10s` (one line)"""
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
    # The latest evaluation with its step; the step-0 baseline is "before training", not current.
    if view.eval_loss is not None and view.eval_step:
        parts.append(f"eval loss {view.eval_loss:.4f} @ step {view.eval_step}")
    if view.tokens_per_s:
        parts.append(f"{view.tokens_per_s:,.0f} tok/s")
    if view.elapsed_s is not None:
        parts.append(f"{format_duration(view.elapsed_s)} elapsed")
    remaining = view.remaining_s
    parts.append(f"ETA {format_duration(remaining)}" if remaining is not None else "ETA ?")
    if view.attempt > 1:
        parts.append(f"attempt {view.attempt}")
    return " · ".join(parts)


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
