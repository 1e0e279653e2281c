"""The terminal view of a run (cli/progress.py): live display, plain lines, the final summary."""

from __future__ import annotations

import io
import math
import re
from datetime import UTC, datetime, timedelta

import pytest

from brightrun.protocol import TrainerPhase, TrainerStatus
from cli.progress import TerminalProgress, summary_lines, terminal_progress
from tasks.reporting.prefect_artifacts import RunReporter
from tasks.reporting.progress import current_progress_sink
from tasks.reporting.summary import RunSummary

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
JOB = "1a2b3c4d-aaaa-bbbb-cccc-1234567890ab"


def _summary(**changes: object) -> RunSummary:
    fields: dict[str, object] = {
        "job_id": JOB,
        "status": "completed",
        "base_model": "org/m",
        "dataset": "sample",
        "steps": 12,
        "eval_loss": 2.5,
        "perplexity": math.exp(2.5),
        "baseline_eval_loss": 3.1,
        "cost_usd": 0.0,
        "interruptions": 1,
        "train_seconds": 95.0,
        "adapter_uri": "/home/u/.brightrun/storage/jobs/x/adapter",
        "summary_uri": "/home/u/.brightrun/storage/jobs/x/summary.md",
        "loss_curve_uri": "/home/u/.brightrun/storage/jobs/x/loss_curve.svg",
    }
    fields.update(changes)
    return RunSummary(**fields)  # type: ignore[arg-type]


class _NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def _run_heartbeats(sink: TerminalProgress, beats: list[tuple[int, int, float | None]]) -> None:
    """Heartbeats (seconds since start, step, loss) through a reporter, as the flow sends them."""
    now = [T0]
    reporter = RunReporter(JOB, enabled=False, sink=sink, clock=lambda: now[0])
    for seconds, step, loss in beats:
        now[0] = T0 + timedelta(seconds=seconds)
        reporter.heartbeat(
            TrainerStatus(
                phase=TrainerPhase.training,
                attempt=1,
                step=step,
                total_steps=30,
                epoch=step / 15,
                loss=loss,
                tokens_per_s=1500.0,
            )
        )


def test_plain_output_prints_a_line_only_when_the_step_changes() -> None:
    out = _NotATerminal()
    sink = TerminalProgress(out)
    assert not sink.live_display  # not a TTY: plain lines
    # Heartbeats every 5 s; the step does not move on every one (the 117 lines).
    _run_heartbeats(
        sink, [(0, 0, None), (5, 0, None), (10, 3, 6.8), (15, 3, 6.8), (20, 9, 5.2), (25, 9, 5.2)]
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 == sink.lines_printed
    steps = [re.search(r"step (\d+)/30", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert steps == ["0", "3", "9"]
    last = lines[-1]
    assert last.startswith("job 1a2b3c4d: step 9/30 (30%)")
    # 9 steps in 20 s: the 21 left take 47 s
    for part in ("epoch 0.60", "loss 5.2000", "1,500 tok/s", "20s elapsed", "ETA 47s"):
        assert part in last, (part, last)
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in a log file


def test_live_display_draws_in_place_and_then_prints_the_summary() -> None:
    out = io.StringIO()
    sink = TerminalProgress(out, live=True)
    _run_heartbeats(sink, [(0, 0, None), (10, 3, 6.8), (20, 9, 5.2)])
    sink.on_finish(_summary())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "step 9/30" in text and "ETA" in text
    assert f"job {JOB} completed" in text
    assert sink.lines_printed == 0  # the live display, not lines


def _venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The venv activated, so the printed commands use the bare `brightrun`."""
    import os
    import sys

    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}")


def test_summary_lists_eval_loss_time_cost_and_where_things_are(monkeypatch: pytest.MonkeyPatch) -> None:
    _venv_on_path(monkeypatch)
    lines = summary_lines(_summary())
    text = "\n".join(lines)
    assert lines[0] == f"job {JOB} completed"
    assert "eval loss      2.5 (-0.6000 from 3.1000 before training)" in text
    assert "perplexity     12.18 (was 22.2)" in text
    assert "training time  1m35s (12 steps)" in text
    assert "cost           $0.0000, 1 interruption" in text
    assert "adapter        /home/u/.brightrun/storage/jobs/x/adapter" in text
    assert "loss_curve.svg" in text and "summary.md" in text
    assert f"  brightrun chat {JOB}" in lines and lines[lines.index("next:") + 1].startswith(
        "  brightrun generate"
    )


def test_failed_run_summary_says_why_and_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    _venv_on_path(monkeypatch)
    lines = summary_lines(
        _summary(
            status="failed",
            eval_loss=None,
            perplexity=None,
            adapter_uri=None,
            error_message="the trainer failed in training: OOM\nmore",
        )
    )
    text = "\n".join(lines)
    assert "error: the trainer failed in training: OOM" in text and "more" not in text
    assert "adapter        not produced" in text
    assert f"brightrun resume {JOB}" in text


def test_the_cli_sink_is_installed_only_while_the_run_lasts() -> None:
    out = _NotATerminal()
    with terminal_progress(out) as sink:
        assert current_progress_sink() is sink
        assert RunReporter(JOB, enabled=False).sink is sink  # the flow's reporter finds it
        sink.on_finish(_summary())
    assert current_progress_sink() is not sink
    assert f"job {JOB} completed" in out.getvalue()


def test_printed_commands_name_brightrun_as_the_user_can_type_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    from cli.progress import typeable

    venv_bin = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated: the full path
    assert typeable(f"brightrun resume {JOB}") == f"{venv_bin}/brightrun resume {JOB}"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated: the bare name
    assert typeable(f"brightrun resume {JOB}") == f"brightrun resume {JOB}"
