"""`brightrun prepare` on bad input: a clear message naming where, exit code 2, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from brightrun import prepared
from cli.main import app
from tests.unit.test_dataset_schema import make_conversation, make_file

runner = CliRunner()


def run_prepare(tiny_model: Path, source: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(
        app, ["prepare", str(source), "--tokenizer", str(tiny_model), "--out", str(out), *extra]
    )


def good() -> dict[str, Any]:
    return make_file([make_conversation("c1", 3), make_conversation("c2", 3)])


def _mutate(fn: Callable[[dict[str, Any]], None]) -> bytes:
    data = good()
    fn(data)
    return json.dumps(data).encode()


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


P = ["conversations", 1, "training_pairs", 1]  # conversation c2, pair c2-p2
CASES: dict[str, tuple[bytes, list[str], str]] = {
    "not_json": (b"<html>not json</html>", [], "not valid JSON"),
    "truncated_json": (json.dumps(good()).encode()[:-300], [], "truncated"),
    "wrong_format_spec": (
        _mutate(_set(["training_file_metadata", "format_spec"], "alpaca")),
        [],
        "field training_file_metadata.format_spec: is 'alpaca'",
    ),
    "missing_required_field": (
        _mutate(_delete([*P, "system_prompt"])),
        [],
        "conversation c2, pair c2-p2 (#1) turn 2, field system_prompt: Field required",
    ),
    "wrong_type": (
        _mutate(_set([*P, "training_metadata", "quality_score"], "4")),
        [],
        "conversation c2, pair c2-p2 (#1) turn 2, field training_metadata.quality_score",
    ),
    "empty_conversations": (json.dumps(make_file([])).encode(), [], "field conversations: is empty"),
    "bad_role": (
        _mutate(_set([*P, "conversation_history", 1, "role"], "tool")),
        [],
        "conversation c2, pair c2-p2 (#1) turn 2, field conversation_history[1].role",
    ),
    "duplicate_pair_ids": (
        _mutate(_set([*P, "id"], "c1-p1")),
        [],
        "conversation c2, pair c1-p1 (#1) turn 2, field id: duplicate pair id",
    ),
    "turns_out_of_order": (
        _mutate(_set([*P, "turn_number"], 1)),
        [],
        "conversation c2, pair c2-p2 (#1) turn 1, field turn_number",
    ),
    "invalid_utf8": (
        json.dumps(good()).encode().replace(b"Reply 2 for c2", b"Reply \xc3\x28 for c2"),
        [],
        "invalid UTF-8 at byte",
    ),
    "target_cannot_fit": (
        _mutate(_set([*P, "target_response"], "far too long " * 200)),
        ["--max-seq-length", "200"],
        "conversation c2, pair c2-p2, field target_response",
    ),
    "zero_trainable_targets": (json.dumps(good()).encode(), ["--min-quality", "5"], "no trainable target"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_names_where_and_writes_nothing(
    case: str, tiny_model: Path, tmp_path: Path
) -> None:
    content, extra, expected = CASES[case]
    source = tmp_path / "in" / "bad.json"
    source.parent.mkdir()
    source.write_bytes(content)
    out_parent = tmp_path / "prepared"
    result = run_prepare(tiny_model, source, out_parent / "data", *extra)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    # Nothing partial: neither the output nor a temporary sibling.
    assert not out_parent.exists() or list(out_parent.iterdir()) == []


def test_prepare_prints_summary_and_writes_report(
    tiny_model: Path, sample_dataset: Path, tmp_path: Path, brightrun_home: Path
) -> None:
    out = tmp_path / "data"
    result = run_prepare(tiny_model, sample_dataset, out, "--max-seq-length", "1024", "--seed", "3")
    assert result.exit_code == 0, result.output
    report = json.loads((out / prepared.REPORT).read_text())
    assert f"kept targets {report['kept_targets']}" in result.output
    assert len(result.output.splitlines()) <= 24
    meta = prepared.read_meta(out)
    assert (meta.max_seq_length, meta.seed) == (1024, 3)


def test_invalid_option_is_an_input_error(
    tiny_model: Path, sample_dataset: Path, tmp_path: Path, brightrun_home: Path
) -> None:
    result = run_prepare(tiny_model, sample_dataset, tmp_path / "o", "--validation-fraction", "1.5")
    assert result.exit_code == 2 and "--validation-fraction" in result.output
    assert not (tmp_path / "o").exists()


def test_prepare_never_imports_torch(
    tiny_model: Path, sample_dataset: Path, tmp_path: Path, brightrun_home: Path
) -> None:
    """The orchestrator side stays light (issue 16): a whole `brightrun prepare` process runs
    without importing torch (nor Prefect)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cli.main import app\n"
        "try:\n"
        f"    app(['prepare', {str(sample_dataset)!r}, '--tokenizer', {str(tiny_model)!r},"
        f" '--out', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('loaded:', sorted(m for m in ('torch', 'prefect') if m in sys.modules))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    assert (tmp_path / "out" / prepared.META).is_file()


def test_missing_dataset_file(tiny_model: Path, tmp_path: Path, brightrun_home: Path) -> None:
    result = run_prepare(tiny_model, tmp_path / "nope.json", tmp_path / "o")
    assert result.exit_code == 2 and "nope.json: no such file" in result.output


def test_make_tiny_model_cli(tmp_path: Path, sample_dataset: Path) -> None:
    pytest.importorskip("torch")
    result = runner.invoke(app, ["make-tiny-model", str(tmp_path / "m"), "--dataset", str(sample_dataset)])
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|start_header_id|>user<|end_header_id|>" in text and (tmp_path / "m" / "config.json").exists()
