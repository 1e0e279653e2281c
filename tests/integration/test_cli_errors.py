"""Errors a tired user makes (issue 13): each is exit 2 with the problem located, before any
Prefect server starts, with no traceback around it.

Each case runs the real CLI (`python -m cli ...`) in a fresh BRIGHTRUN_HOME and PREFECT_HOME
with no PREFECT_API_URL, so a check that ran too late would start Prefect's temporary
server: the tests assert it never did (its banner, its database), rather than timing it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"  # never fetched: every case stops before
PREFECT_BANNER = "Starting temporary server"


def _cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIGHTRUN_", "PREFECT_API_URL", "RUNPOD_API_KEY"))
    }
    env.update(
        {
            "BRIGHTRUN_HOME": str(tmp_path / "home"),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",  # help text is not wrapped mid-word
            "NO_COLOR": "1",
            "TERM": "dumb",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_clean_exit_2(done: subprocess.CompletedProcess[str], tmp_path: Path, *needles: str) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 2, (done.returncode, out[-3000:])
    for needle in needles:
        assert needle in out, (needle, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    # Checked before Prefect: its temporary server never started, so it wrote no database.
    assert PREFECT_BANNER not in out, out[-3000:]
    assert not list((tmp_path / "prefect-home").glob("*.db")), out[-3000:]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_missing_training_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file.json"
    done = _cli(tmp_path, "train", str(missing), "--base-model", MODEL)
    _assert_clean_exit_2(done, tmp_path, "no-such-file.json")


def test_a_bad_flag_value_is_a_usage_error(tmp_path: Path, sample_dataset: Path) -> None:
    done = _cli(tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--max-steps", "ten")
    _assert_clean_exit_2(done, tmp_path, "Invalid value for '--max-steps'")


def test_an_unknown_preset_lists_the_presets(tmp_path: Path, sample_dataset: Path) -> None:
    done = _cli(tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--preset", "fast")
    _assert_clean_exit_2(done, tmp_path, "fast", "conservative", "balanced", "aggressive")


def test_an_out_of_range_flag_names_the_field(tmp_path: Path, sample_dataset: Path) -> None:
    done = _cli(tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--learning-rate", "-1")
    _assert_clean_exit_2(done, tmp_path, "learning_rate")


def test_a_wrong_type_in_the_config_file_is_located(tmp_path: Path, sample_dataset: Path) -> None:
    config = _write(tmp_path / "spec.yaml", 'training:\n  max_steps: "10"\n  learning_rate: 2e-4\n')
    done = _cli(tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--config", str(config))
    _assert_clean_exit_2(done, tmp_path, "spec.yaml", "training.max_steps", "'10'")
    assert "TypeError" not in done.stderr


def test_an_unknown_config_section_lists_the_sections(tmp_path: Path, sample_dataset: Path) -> None:
    config = _write(tmp_path / "spec.yaml", "trainig:\n  max_steps: 10\n")
    done = _cli(tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--config", str(config))
    _assert_clean_exit_2(done, tmp_path, "spec.yaml", "trainig", "training", "lora")


def test_a_missing_config_file_is_named(tmp_path: Path, sample_dataset: Path) -> None:
    done = _cli(
        tmp_path, "train", str(sample_dataset), "--base-model", MODEL, "--config", str(tmp_path / "nope.yaml")
    )
    _assert_clean_exit_2(done, tmp_path, "nope.yaml")


def test_a_jsonl_training_file_says_which_format_is_expected(tmp_path: Path) -> None:
    jsonl = _write(
        tmp_path / "pairs.jsonl",
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
        '{"messages": [{"role": "user", "content": "yo"}]}\n',
    )
    done = _cli(tmp_path, "train", str(jsonl), "--base-model", MODEL)
    _assert_clean_exit_2(done, tmp_path, "pairs.jsonl", "brightrun-lora-v4")


def test_a_non_json_training_file_says_which_format_is_expected(tmp_path: Path) -> None:
    csv = _write(tmp_path / "pairs.csv", "prompt,response\nhi,hello\n")
    done = _cli(tmp_path, "train", str(csv), "--base-model", MODEL)
    _assert_clean_exit_2(done, tmp_path, "pairs.csv", "brightrun-lora-v4")


def test_every_problem_is_listed_at_once(tmp_path: Path, sample_dataset: Path) -> None:
    done = _cli(
        tmp_path,
        "train",
        str(sample_dataset),
        "--base-model",
        MODEL,
        "--learning-rate",
        "-1",
        "--lora-r",
        "0",
    )
    _assert_clean_exit_2(done, tmp_path, "learning_rate", "r")
    assert done.stderr.count("\n") >= 2  # more than one line: the list, not the first problem only


def test_an_unknown_status_lists_the_allowed_values(tmp_path: Path) -> None:
    done = _cli(tmp_path, "jobs", "list", "--status", "runing")
    _assert_clean_exit_2(done, tmp_path, "runing", "training", "completed")


def test_an_unknown_artifact_type_lists_the_allowed_values(tmp_path: Path) -> None:
    done = _cli(tmp_path, "artifacts", "list", "--type", "lorra")
    _assert_clean_exit_2(done, tmp_path, "lorra", "lora")


def test_read_only_commands_never_create_a_registry(tmp_path: Path) -> None:
    done = _cli(tmp_path, "jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "home" / "registry.db").exists()
    done = _cli(tmp_path, "artifacts", "list")
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "home" / "registry.db").exists()


def test_train_help_describes_every_option_and_the_presets(tmp_path: Path) -> None:
    import typer

    from cli.main import app

    command = typer.main.get_command(app)
    train = command.commands["train"]  # type: ignore[attr-defined]
    options = [p for p in train.params if p.param_type_name == "option"]
    undescribed = [p.opts[0] for p in options if not getattr(p, "help", None)]
    assert not undescribed, f"options without a description: {undescribed}"
    done = _cli(tmp_path, "train", "--help")
    assert done.returncode == 0, done.stderr
    for preset in ("conservative", "balanced", "aggressive"):
        assert preset in done.stdout
    for param in options:
        assert param.opts[0] in done.stdout, param.opts[0]


def test_the_ui_run_form_has_a_type_default_and_description_for_every_field() -> None:
    """The UI builds its run form from the served deployment's schema: an optional field with a
    null branch renders as 'Property is type "None"'; one without a description is a bare name.
    (tests/integration/test_prefect_ui.py looks at the rendered form in Chromium.)"""
    from deployments.run_form import deployment_run_form
    from deployments.serve import build_deployments

    deployment = next(d for d in build_deployments(include_scheduled=False) if d.name == "serve")
    schema = deployment_run_form(deployment)
    assert schema is not None
    problems = []
    for name, prop in schema["properties"].items():
        if not prop.get("description"):
            problems.append(f"{name}: no description")
        if {"type": "null"} in prop.get("anyOf", []) and prop.get("default") is None:
            problems.append(f"{name}: stuck on None ('Property is type None')")
    for section, definition in schema["definitions"].items():
        for name, prop in definition.get("properties", {}).items():
            if "default" in prop and prop.get("type") != "boolean":
                problems.append(f"{section}.{name}: a prefilled default would override the preset")
    assert not problems, problems
    training = schema["definitions"]["TrainingSettings"]["properties"]
    assert "(default 0.0002)" in training["learning_rate"]["description"]
    assert schema["properties"]["preset"]["default"] == "balanced"


def test_a_run_in_a_pipe_prints_a_line_per_step_then_the_summary(tmp_path: Path) -> None:
    """The other end of a tired user's run: not a TTY (CI, `| tee`), so plain lines, one per
    step change (never the same step twice), then the summary with eval loss, time and the
    adapter."""
    import re

    done = _cli(tmp_path, "demo", "--max-steps", "6", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    progress = [line for line in done.stdout.splitlines() if re.match(r"job [0-9a-f]{8}: step \d+/", line)]
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert steps and all(b != a for a, b in itertools.pairwise(steps)), progress
    assert steps[-1] == 6
    assert any("ETA" in line and "tok/s" in line for line in progress), progress
    summary = done.stdout[done.stdout.index(" completed\n") :]
    assert re.search(r"eval loss +\d+\.\d+ \([+-]\d+\.\d+ from \d+\.\d+ before training\)", summary), summary
    assert re.search(r"training time +\d+s \(6 steps\)", summary), summary
    assert re.search(r"adapter +/\S+/adapter\n", summary), summary
    assert "brightrun chat " in summary
    assert "\x1b[" not in done.stdout  # no terminal control codes in a pipe


def test_jobs_show_takes_the_short_id_it_prints_and_refuses_an_ambiguous_one(tmp_path: Path) -> None:
    import uuid

    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo

    (tmp_path / "home").mkdir()
    engine = open_registry_url(f"sqlite:///{tmp_path / 'home' / 'registry.db'}")
    try:
        for last in "12":
            repo.create_job(
                engine,
                job_name=f"twin {last}",
                base_model="m",
                job_id=uuid.UUID(f"abcd1234-0000-4000-8000-00000000000{last}"),
            )
        repo.create_job(engine, job_name="the other", base_model="m", job_id=uuid.UUID(int=0xFEED << 96))
    finally:
        engine.dispose()
    shown = _cli(tmp_path, "jobs", "show", "abcd1234-0000-4000-8000-0000000000")  # one char short
    assert shown.returncode == 2 and "several job ids" in shown.stdout + shown.stderr, shown.stderr[-2000:]
    assert "abcd1234-0000-4000-8000-000000000001" in shown.stdout + shown.stderr
    other = str(uuid.UUID(int=0xFEED << 96))
    done = _cli(tmp_path, "jobs", "show", other[:8], "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f'"{other}"' in done.stdout and "the other" in done.stdout


def test_a_training_file_with_a_byte_order_mark_is_checked_early_and_located(tmp_path: Path) -> None:
    """Issue 21: a BOM file once passed the early check and failed 41 s later in the flow,
    leaving a failed job whose hint said `resume`. Now its problems are located before
    anything starts, and no job row or hint is left."""
    import json

    data = json.loads((REPO / "examples" / "brightrun-sample.json").read_text())
    data["conversations"][1]["training_pairs"][0]["turn_number"] = "one"
    bom = tmp_path / "windows-editor.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    done = _cli(tmp_path, "train", str(bom), "--base-model", MODEL)
    conversation = data["conversations"][1]["conversation_metadata"]["conversation_id"]
    _assert_clean_exit_2(done, tmp_path, "windows-editor.json", conversation, "field turn_number")
    out = done.stdout + done.stderr
    assert "resume" not in out and "invalid char" not in out, out[-3000:]
    assert not (tmp_path / "home" / "registry.db").exists()
