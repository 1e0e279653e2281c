"""`brightrun review ...`: people review what the pipeline made. This module defines the
`review` group and its `score` command (issue 25); other review commands register on
`review_app` from their own modules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from brightrun.errors import InputError

review_app = typer.Typer(help="People review what the pipeline made.", no_args_is_help=True)


def _read_scores(path: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """`[{"prompt": ..., "reply": ..., "score": 0..1}, ...]`: one entry per sample reply."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--file {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"--file {path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"--file {path}: expected a non-empty list of {{prompt, reply, score}} objects")
    problems = [
        f"entry {i + 1}: needs a numeric score"
        for i, e in enumerate(entries)
        if not isinstance(e, dict)
        or isinstance(e.get("score"), bool)
        or not isinstance(e.get("score"), int | float)
    ]
    if problems:
        raise InputError(f"--file {path}: {len(problems)} problem(s)", problems)
    return [float(e["score"]) for e in entries], entries


@review_app.command("score")
def score(
    artifact: Annotated[str, typer.Argument(help="Artifact id, served name, job id, or `production`")],
    value: Annotated[float | None, typer.Option("--score", help="One overall score, 0 to 1")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSON list of {prompt, reply, score} per sample reply")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who scored (default: $USER)")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="With `production`")] = None,
) -> None:
    """Record people's score of an adapter's replies as its human_eval_score (the mean, 0-1)."""
    from brightrun.registry.human_scores import record_human_score
    from brightrun.registry.promotion import resolve_artifact
    from brightrun.resources import Resources

    if (value is None) == (file is None):
        raise InputError("give either --score 0..1 or --file scores.json")
    scores, details = ([value], []) if value is not None else _read_scores(file)  # type: ignore[arg-type]
    who = by or os.environ.get("USER") or ""
    with Resources.from_settings() as resources:
        found = resolve_artifact(resources.registry, artifact, base_model=base_model)
        row, mean = record_human_score(
            resources.registry, found.id, scores, scored_by=who, details=details,
            where=f"--file {file}" if file else "--score",
        )  # fmt: skip
    typer.echo(f"{row.id}: human_eval_score {mean:.3f} from {len(scores)} score(s) by {who}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.add_typer(review_app, name="review")
