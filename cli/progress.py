"""A training run in the terminal: one live progress display, then a short summary.

`brightrun train`, `resume` and `demo` run the flow in this process; they wrap it in
`with terminal_progress():`, which installs a `TerminalProgress` as the progress sink of
tasks/reporting/progress.py. On a terminal it is one rich live display (bar, step/total, epoch, loss,
eval loss, tokens/s, elapsed, ETA); elsewhere (CI, a pipe, a log file) it prints one plain
line each time the step changes. At the end it prints what a person asks after a run: eval
loss and perplexity (and how far they moved from the step-0 baseline), time, cost,
interruptions, where the adapter, summary, curve and log are, and what to type next.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tasks.reporting.names import short_id
from tasks.reporting.progress import ProgressView, format_duration, progress_line, use_progress_sink
from tasks.reporting.summary import RunSummary, eval_loss_text, next_commands, perplexity_text


def typeable(command: str) -> str:
    """A printed `brightrun ...` command as this user can run it (the venv may not be active)."""
    from cli.interrupt import brightrun_command

    program = brightrun_command()
    return program + command[len("brightrun") :] if command.startswith("brightrun ") else command


def summary_lines(summary: RunSummary) -> list[str]:
    """The end of a run in a few lines (plain text; the terminal may colour the first)."""
    s = summary
    rows: list[tuple[str, str]] = []
    if s.status == "completed" or s.eval_loss is not None:
        rows += [("eval loss", eval_loss_text(s)), ("perplexity", perplexity_text(s))]
    steps = f" ({s.steps} steps)" if s.steps is not None else ""
    rows.append(("training time", f"{format_duration(s.train_seconds)}{steps}"))
    cost = "n/a" if s.cost_usd is None else f"${s.cost_usd:.4f}"
    rows.append(("cost", f"{cost}, {s.interruptions} interruption{'s' if s.interruptions != 1 else ''}"))
    rows.append(("adapter", s.adapter_uri or "not produced"))
    for label, value in (
        ("summary", s.summary_uri),
        ("loss curve", s.loss_curve_uri),
        ("trainer log", s.training_log_uri),
    ):
        if value:
            rows.append((label, value))
    width = max(len(label) for label, _ in rows)
    lines = [f"job {s.job_id} {s.status}"]
    if s.error_message:
        lines.append(f"  error: {s.error_message.strip().splitlines()[0][:300]}")
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += ["next:", *(f"  {typeable(command)}" for command in next_commands(s))]
    return lines


class TerminalProgress:
    """The progress sink of a run started from this terminal."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live_display = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, highlight=False, force_terminal=self.live_display or None)
        self._live: Live | None = None
        self._last_step: int | None = None
        self._lock = threading.Lock()
        self.lines_printed = 0
        self.finished: RunSummary | None = None

    # -- the sink

    def on_progress(self, view: ProgressView) -> None:
        with self._lock:
            if self.live_display:
                self._show_live(view)
            elif view.step != self._last_step:
                self._last_step = view.step
                self.console.print(f"job {short_id(view.job_id)}: {progress_line(view)}", soft_wrap=True)
                self.lines_printed += 1

    def on_finish(self, summary: RunSummary) -> None:
        with self._lock:
            self._stop_live()
            self.finished = summary
            lines = summary_lines(summary)
            style = {"completed": "bold green", "failed": "bold red"}.get(summary.status, "bold yellow")
            self.console.print(Text(lines[0], style=style if self.live_display else ""), soft_wrap=True)
            for line in lines[1:]:
                self.console.print(line, soft_wrap=True, markup=False)

    # -- the live display

    def _render(self, view: ProgressView) -> Group:
        bar = ProgressBar(total=max(view.total_steps, 1), completed=view.step, width=40)
        head = Table.grid(padding=(0, 1))
        head.add_row(bar, Text(f"{view.percent:.0f}%  job {short_id(view.job_id)}  {view.status}"))
        return Group(head, Text(progress_line(view)))

    def _show_live(self, view: ProgressView) -> None:
        if self._live is None:
            self._live = Live(self._render(view), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        else:
            self._live.update(self._render(view))

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        with self._lock:
            self._stop_live()


@contextlib.contextmanager
def terminal_progress(
    stream: TextIO | None = None, *, live: bool | None = None
) -> Iterator[TerminalProgress]:
    """`with terminal_progress() as progress:` around a flow run started from the CLI."""
    sink = TerminalProgress(stream, live=live)
    try:
        with use_progress_sink(sink):
            yield sink
    finally:
        sink.close()
