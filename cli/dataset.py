"""`brightrun prepare` and `brightrun make-tiny-model`: the dataset stage from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from brightrun.errors import BrightrunError

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "brightrun-sample.json"


def _fail(exc: BrightrunError) -> typer.Exit:
    typer.secho(f"error: {exc}", fg="red", err=True)
    return typer.Exit(exc.exit_code)


def prepare(
    dataset: str = typer.Argument(..., help="Training file: a path, s3://bucket/key or https:// URL"),
    tokenizer: str = typer.Option(
        ..., "--tokenizer", help="Base model directory or hub id (its chat template)"
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the prepared dataset (replaced atomically)"),
    max_seq_length: int = typer.Option(2048, "--max-seq-length", help="Longest sequence in tokens"),
    min_quality: float = typer.Option(
        3.0, "--min-quality", help="Targets scored below this are context only"
    ),
    validation_fraction: float = typer.Option(
        0.1, "--validation-fraction", help="Share of conversations held out for validation"
    ),
    seed: int = typer.Option(42, "--seed", help="Seed of the train/validation split"),
    skip_overlong_targets: bool = typer.Option(
        False, "--skip-overlong-targets", help="Skip (and report) targets that cannot fit instead of failing"
    ),
    max_arc_share: float | None = typer.Option(
        None, "--max-arc-share", help="Cap any one emotional_arc_key at this share of the training set (0-1]"
    ),
) -> None:
    """Validate, convert and tokenize a brightrun-lora-v4 file; write DIR and DIR/report.json."""
    from pydantic import ValidationError

    from brightrun.errors import InputError, validation_problems
    from brightrun.resources import Resources
    from tasks.dataset.fetch import fetch_source
    from tasks.dataset.prepare import PrepareOptions, prepare_dataset
    from tasks.dataset.report import render_summary

    try:
        try:
            options = PrepareOptions(
                max_seq_length=max_seq_length,
                min_quality=min_quality,
                validation_fraction=validation_fraction,
                seed=seed,
                skip_overlong_targets=skip_overlong_targets,
                max_arc_share=max_arc_share,
            )
        except ValidationError as exc:
            raise InputError(
                "invalid options",
                validation_problems(exc.errors(), as_option=True),
            ) from exc
        resources = Resources.from_settings()
        source = fetch_source(
            dataset,
            resources.settings.cache_dir / "datasets",
            resources.open_storage,
            resources.settings.fetch_policy,
        )
        report = prepare_dataset(
            source.path,
            tokenizer,
            out,
            options,
            source_sha256=source.sha256,
            source_name=source.display_name,
            limits=resources.settings.dataset_limits,
        )
    except BrightrunError as exc:
        raise _fail(exc) from exc
    typer.echo(render_summary(report, out))


def prepare_preferences(
    source: Path = typer.Argument(..., help="Preference JSONL (TRL conversational DPO pairs or KTO thumbs)"),
    objective: str = typer.Option(
        ..., "--objective", help="dpo (chosen/rejected) or kto (completion + label)"
    ),
    tokenizer: str = typer.Option(
        ..., "--tokenizer", help="Base model directory or hub id (its chat template)"
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the prepared set (replaced atomically)"),
    max_seq_length: int = typer.Option(2048, "--max-seq-length", help="Longest sequence in tokens"),
    validation_fraction: float = typer.Option(
        0.1, "--validation-fraction", help="Share of conversations held out for validation"
    ),
    seed: int = typer.Option(42, "--seed", help="Seed of the train/validation split"),
) -> None:
    """Check and tokenize a preference file for training.objective dpo or kto; write DIR."""
    from brightrun.errors import InputError
    from tasks.dataset.preferences import PreferenceOptions
    from tasks.dataset.preferences import prepare_preferences as prepare_set

    try:
        if objective not in ("dpo", "kto"):
            raise InputError(f"--objective: {objective!r} is not dpo or kto")
        if not source.is_file():
            raise InputError(f"{source}: no such preference file")
        options = PreferenceOptions(objective, max_seq_length, validation_fraction, seed)  # type: ignore[arg-type]
        report = prepare_set(source, tokenizer, out, options)
    except BrightrunError as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"{report.records} {objective} records: {report.train} train, {report.validation} validation, "
        f"{len(report.skipped)} skipped, {len(report.duplicates)} duplicates dropped; written to {out}"
    )


def make_tiny_model(
    directory: Path = typer.Argument(..., help="Where to write the model and tokenizer"),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Training file whose text trains the tokenizer (default: the sample)"
    ),
) -> None:
    """Build a tiny random Llama-architecture model with a Llama-3-style chat template (demo, tests)."""
    from brightrun.errors import InputError

    source = dataset or REPO_SAMPLE
    if not source.is_file():
        raise _fail(InputError(f"{source}: no such training file; pass --dataset FILE"))
    try:
        from brightrun.tiny_model import build_tiny_model
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise _fail(BrightrunError(f"make-tiny-model needs the train extra: {exc}")) from exc
    path = build_tiny_model(directory, source)
    typer.echo(f"tiny model written to {path}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.command("prepare")(prepare)
    app.command("make-tiny-model")(make_tiny_model)
    app.command("prepare-preferences")(prepare_preferences)
