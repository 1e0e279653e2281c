"""Preference files: located errors, the split by prompt, assistant-only tokenization, and
the trainer's reading of the prepared set (DPO pairs, KTO thumbs with their KL partners)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brightrun import prepared
from brightrun.errors import InputError
from tasks.dataset.preferences import PreferenceOptions, prepare_preferences, read_preferences, split_groups
from tests.fixtures.preferences import write_dpo, write_kto

PROMPT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I lost my job."}]


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_every_problem_is_named_by_file_line_and_field(tmp_path: Path) -> None:
    good = {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": "I am sorry."}],
        "rejected": [{"role": "assistant", "content": "Get over it."}],
    }
    path = _write(
        tmp_path / "pairs.jsonl",
        [
            good,
            "{not json",
            {"prompt": PROMPT, "chosen": [{"role": "user", "content": "x"}], "rejected": good["rejected"]},
            {"prompt": PROMPT, "completion": good["chosen"], "label": True},
            {
                "prompt": [{"role": "user", "content": ""}],
                "chosen": good["chosen"],
                "rejected": good["chosen"],
            },
        ],
    )
    with pytest.raises(InputError) as caught:
        read_preferences(path, "dpo")
    problems = caught.value.problems
    assert any(p.startswith("pairs.jsonl:2: not JSON") for p in problems)
    assert any(p.startswith("pairs.jsonl:3: chosen[0].role") for p in problems)
    assert any(p.startswith("pairs.jsonl:4: a KTO record") for p in problems)
    assert any(p.startswith("pairs.jsonl:5: prompt[0].content") for p in problems)
    assert not any(p.startswith("pairs.jsonl:1") for p in problems)


def test_kto_labels_must_be_booleans(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "thumbs.jsonl",
        [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "ok"}], "label": "up"}],
    )
    with pytest.raises(InputError) as caught:
        read_preferences(path, "kto")
    assert caught.value.problems == [
        "thumbs.jsonl:1: label: expected true (thumbs up) or false (thumbs down), got 'up'"
    ]


def test_split_is_deterministic_by_group_and_keeps_both_sides() -> None:
    groups = [f"c{i % 7}" for i in range(40)]
    held = split_groups(groups, 0.3, seed=7)
    assert held == split_groups(list(reversed(groups)), 0.3, seed=7)
    assert 0 < len(held) < 7
    assert split_groups(groups, 0.3, seed=8) != held or len(held) == 7  # the seed matters
    assert split_groups(["one"] * 5, 0.5, seed=1) == set()  # nothing left to train on otherwise


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_prepared_set_scores_only_the_reply_and_is_read_by_the_trainer(
    objective: str, tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from trainer.preference_run import load_preferences

    source = (write_dpo if objective == "dpo" else write_kto)(sample_dataset, tmp_path / "in.jsonl")
    out = tmp_path / "prepared"
    report = prepare_preferences(source, tiny_model, out, PreferenceOptions(objective, 256, 0.25, 7))
    meta = prepared.read_meta(out)
    assert (meta.format, meta.objective) == (prepared.PREFERENCE_FORMAT, objective)
    assert report.train + report.validation == report.records and report.validation > 0
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    first = next(prepared.iter_preferences(out / prepared.TRAIN))
    reply = first.chosen_ids if objective == "dpo" else first.completion_ids
    assert reply is not None
    assert tok.decode(reply).endswith("<|eot_id|>")
    assert tok.decode(first.prompt_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Conversations never straddle the split.
    splits = {}
    for name in (prepared.TRAIN, prepared.VALIDATION):
        for item in prepared.iter_preferences(out / name):
            line = int(item.source.split(":")[1])
            cid = json.loads(source.read_text().splitlines()[line - 1])["provenance"]["conversation_id"]
            assert splits.setdefault(cid, name) == name

    examples = load_preferences(out / prepared.TRAIN, 256, objective)
    assert len(examples) == report.train
    e = examples[0]
    assert [t for t in e.first[1] if t != -100] == reply
    if objective == "kto":
        assert e.label is not None and e.first[1] != e.second[1]  # KL partner: another reply
    else:
        assert e.label is None and e.scored_tokens() == len(first.chosen_ids) + len(first.rejected_ids)


def test_a_dpo_set_refuses_to_train_as_kto(tiny_model: Path, sample_dataset: Path, tmp_path: Path) -> None:
    from trainer.preference_run import load_preferences

    source = write_dpo(sample_dataset, tmp_path / "in.jsonl")
    out = tmp_path / "prepared"
    prepare_preferences(source, tiny_model, out, PreferenceOptions("dpo", 256, 0.25, 7))
    with pytest.raises(Exception, match="no completion/label"):
        load_preferences(out / prepared.TRAIN, 256, "kto")


def test_cli_prepares_a_set_and_refuses_a_bad_file_with_exit_2(
    tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    good = write_kto(sample_dataset, tmp_path / "thumbs.jsonl")
    out = tmp_path / "prepared"
    args = ["prepare-preferences", "--objective", "kto", "--tokenizer", str(tiny_model), "--out", str(out)]
    done = runner.invoke(app, [*args[:1], str(good), *args[1:], "--max-seq-length", "256"])
    assert done.exit_code == 0, done.output
    assert prepared.read_meta(out).objective == "kto"
    report = json.loads((out / prepared.REPORT).read_text())
    assert f"{len(report['duplicates'])} duplicates dropped" in done.output and report["duplicates"]

    bad = _write(tmp_path / "bad.jsonl", [{"prompt": PROMPT, "chosen": [], "rejected": []}])
    refused = runner.invoke(app, [*args[:1], str(bad), *args[1:-1], str(tmp_path / "other")])
    assert refused.exit_code == 2
    assert "bad.jsonl:1: a DPO record" in refused.output
    assert not (tmp_path / "other").exists()


def test_spec_objective_and_its_constants_are_validated() -> None:
    from brightrun.spec import parse_spec

    spec = parse_spec({"job_id": "j", "base_model": "m", "training": {"objective": "kto"}})
    t = spec.training
    assert (t.objective, t.beta, t.desirable_weight, t.undesirable_weight) == ("kto", 0.1, 1.0, 1.0)
    with pytest.raises(InputError) as caught:
        parse_spec({"job_id": "j", "base_model": "m", "training": {"objective": "ppo", "beta": 0}})
    text = "\n".join(caught.value.problems)
    assert "training.objective" in text and "training.beta" in text
