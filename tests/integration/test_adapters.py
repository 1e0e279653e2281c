"""After training, end to end on the tiny model: generate, eval, promote/rollback, merge,
download, serve, the Prefect flows (issue 14).

Two tiny 4-bit QLoRA adapters are trained once for the module by the real trainer and
registered in an embedded registry: `strong` (lr 5e-3) and `weak` (lr 1e-5, barely moved
from the base), so the better one on held-out loss is known.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from typer.testing import CliRunner

from brightrun import layout
from brightrun.errors import BrightrunError
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.storage import LocalStorage
from cli.main import app
from tasks.adapters.task import publish_adapter
from tests.fixtures.common import SAMPLE_DATASET
from tests.fixtures.training import create_job, run_trainer, small_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "I feel so behind on saving for retirement."
SYSTEM = "You are a calm financial coach."


@dataclass
class Trained:
    home: Path
    storage: LocalStorage
    base_model: Path
    strong: pm.AdapterRow
    weak: pm.AdapterRow

    def adapter_dir(self, art: pm.AdapterRow) -> Path:
        return self.storage.root / layout.JobLayout(art.training_job_id).adapter_dir


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, prepared_dataset: Path
) -> Iterator[Trained]:
    home = tmp_path_factory.mktemp("adapters-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRIGHTRUN_HOME", str(home))
        for var in (
            "BRIGHTRUN_STORAGE_URL",
            "BRIGHTRUN_DATABASE_URL",
            "BRIGHTRUN_CONFIG",
            "BRIGHTRUN_WEBHOOK_SECRET",
        ):
            mp.delenv(var, raising=False)
        resources = Resources.from_settings()
        engine, storage = resources.registry, resources.storage
        assert isinstance(storage, LocalStorage)
        arts = {}
        for name, lr in (("strong", 5e-3), ("weak", 1e-5)):
            job = repo.create_job(engine, job_name=name, base_model=str(tiny_model))
            for step in ("preprocessing", "model_loaded", "training"):
                repo.transition_job(engine, job.id, step)
            spec = small_spec(job.id, tiny_model, training={"learning_rate": lr})
            done = run_trainer(create_job(storage.root, prepared_dataset, spec))
            assert done.returncode == 0, done.stderr[-3000:]
            repo.transition_job(engine, job.id, "completed")
            art = publish_adapter.fn(engine, storage, job.id, base_model=str(tiny_model))
            arts[name] = pm.get_artifact(engine, art.id)
        resources.close()
        yield Trained(home, storage, tiny_model, arts["strong"], arts["weak"])


def cli(*args: str) -> tuple[int, str]:
    """The CLI in-process; a BrightrunError gives its exit code, as `brightrun` would."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, BrightrunError):
        return result.exception.exit_code, str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


_RESOURCES: dict[str, Resources] = {}


def registry() -> Any:
    """The registry of the module's home (one engine for the module)."""
    import os

    home = os.environ["BRIGHTRUN_HOME"]
    if home not in _RESOURCES:
        _RESOURCES[home] = Resources.from_settings()
    return _RESOURCES[home].registry


def by_hand(base_model: Path, adapter_dir: Path, *, four_bit: bool) -> tuple[Any, Any]:
    """The reference: transformers + `PeftModel.from_pretrained`, nothing of ours."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if four_bit:  # as small_spec trains: NF4, double quant, bf16 compute
        kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
            "dtype": torch.bfloat16,
            "device_map": {"": "cpu"},
        }
    base = AutoModelForCausalLM.from_pretrained(str(base_model), **kwargs)
    if four_bit:
        from trainer.model import keep_cpu_weight_layout

        keep_cpu_weight_layout(base)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), AutoTokenizer.from_pretrained(
        str(adapter_dir)
    )


def prompt_ids(tokenizer: Any) -> torch.Tensor:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def greedy(model: Any, ids: torch.Tensor, tokenizer: Any, n: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        )
    return out[0, ids.shape[1] :].tolist()


# ---------------------------------------------------------------- generate


def test_generate_returns_the_tokens_of_peft_by_hand(trained: Trained) -> None:
    tokens = {}
    for art in (trained.strong, trained.weak):
        code, out = cli("generate", art.training_job_id, "--prompt", PROMPT, "--system", SYSTEM,
                        "--max-new-tokens", "16", "--json")  # fmt: skip
        assert code == 0, out
        reply = json.loads(out)
        assert reply["artifact_id"] == art.id and reply["tokens"]
        model, tokenizer = by_hand(trained.base_model, trained.adapter_dir(art), four_bit=True)
        assert reply["tokens"] == greedy(model, prompt_ids(tokenizer), tokenizer)
        assert reply["text"] == tokenizer.decode(reply["tokens"], skip_special_tokens=True).strip()
        tokens[art.id] = reply["tokens"]
    assert tokens[trained.strong.id] != tokens[trained.weak.id]  # the adapter really is applied


def test_bad_references_and_a_mismatched_base_are_clear_errors(trained: Trained, tmp_path: Path) -> None:
    code, out = cli("generate", str(uuid.uuid4()), "--prompt", "hi")
    assert code == 2 and "neither an artifact nor a job" in out
    code, out = cli("generate", "production", "--prompt", "hi")
    assert code == 2 and "no adapter is in production" in out

    from brightrun.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "narrow", SAMPLE_DATASET, hidden_size=32)
    code, out = cli("generate", trained.weak.id, "--prompt", "hi", "--base-model", str(other))
    assert code == 2 and "does not fit the base model" in out

    job = repo.create_job(registry(), job_name="other-base", base_model="other/base")
    for step in ("preprocessing", "model_loaded", "training", "completed"):
        repo.transition_job(registry(), job.id, step)
    foreign = repo.register_artifact(
        registry(), training_job_id=job.id, storage_path="/x", base_model="other/base"
    )
    code, out = cli("eval", trained.strong.id, "--against", foreign.id)
    assert code == 2 and "only adapters of one base model compare" in out


# ---------------------------------------------------------------- eval, promote, rollback


def test_eval_reports_both_models_on_one_set(trained: Trained) -> None:
    code, out = cli("eval", trained.weak.id, "--against", trained.strong.id, "--json", "--samples", "2")
    assert code == 0, out
    record = json.loads(out)
    assert record["candidate"]["artifact_id"] == trained.weak.id
    assert record["against"]["artifact_id"] == trained.strong.id
    conversations = record["conversations"]
    assert conversations > 0 and sum(record["wins"].values()) == conversations
    assert len(record["per_conversation"]) == conversations and len(record["samples"]) == 2
    assert record["candidate"]["tokens"] == record["against"]["tokens"] > 0  # one set, both models
    assert record["candidate"]["loss"] > record["against"]["loss"]  # 1e-5 learned less than 5e-3
    # The strong adapter's figure matches what the trainer measured on the same split.
    eval_json = json.loads(trained.storage.get_bytes(layout.JobLayout(trained.strong.training_job_id).eval))
    assert record["against"]["loss"] == pytest.approx(eval_json["eval_loss"], rel=1e-3)

    code, out = cli("eval", trained.strong.id, "--against", "base", "--json", "--samples", "0")
    assert code == 0, out
    vs_base = json.loads(out)
    assert (
        vs_base["against"]["artifact_id"] is None and vs_base["eval_set_sha256"] == record["eval_set_sha256"]
    )
    # A brightrun-lora-v4 file as the eval set: prepared with the candidate's tokenizer, all of it.
    code, out = cli("eval", trained.strong.id, "--against", "base", "--eval-set", str(SAMPLE_DATASET),
                    "--samples", "0", "--json")  # fmt: skip
    assert code == 0, out
    whole = json.loads(out)
    assert whole["eval_set"] == str(SAMPLE_DATASET) and whole["conversations"] > conversations
    stored = pm.evaluations(registry(), trained.weak)
    assert stored and stored[-1].against.artifact_id == trained.strong.id


def test_promote_rollback_with_the_gate(trained: Trained) -> None:
    strong, weak = trained.strong, trained.weak
    code, out = cli("promote", strong.id, "--to", "testing")
    assert code == 0, out
    code, out = cli("promote", strong.id, "--to", "production")
    assert code == 0, out
    code, out = cli("promote", weak.id, "--to", "production")  # evaluated against strong, worse
    assert code == 1 and "promotion refused" in out and "worse than" in out
    assert [pm.get_artifact(registry(), a.id).deployment_status for a in (strong, weak)] == [
        "production",
        "stored",
    ]

    code, out = cli(
        "promote", weak.id, "--to", "production", "--force", "--reason", "A/B on real users", "--json"
    )
    assert code == 0, out
    assert json.loads(out)["deployment_status"] == "production"
    assert [pm.get_artifact(registry(), a.id).deployment_status for a in (strong, weak)] == [
        "archived",
        "production",
    ]
    promoted = repo.list_events(registry(), weak.training_job_id, type=pm.PROMOTED)
    assert promoted[-1].payload["reason"] == "A/B on real users" and promoted[-1].payload["forced"]

    code, out = cli("rollback")
    assert code == 0, out
    assert [pm.get_artifact(registry(), a.id).deployment_status for a in (strong, weak)] == [
        "production",
        "archived",
    ]
    assert pm.get_artifact(registry(), strong.id).deployed_at is not None
    code, out = cli("promote", weak.id, "--to", "production")
    assert code == 1 and "archived" in out


# ---------------------------------------------------------------- merge and download


def test_merged_export_matches_the_adapter_on_the_full_precision_base(
    trained: Trained, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = tmp_path / "merged"
    code, out = cli("export", trained.strong.id, "--format", "merged", "--out", str(out_dir))
    assert code == 0, out
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    assert tokenizer.chat_template  # the chat template travels with the merged model
    assert not any("lora" in name for name in merged.state_dict())
    reference, ref_tok = by_hand(trained.base_model, trained.adapter_dir(trained.strong), four_bit=False)
    ids = prompt_ids(tokenizer)
    assert torch.equal(ids, prompt_ids(ref_tok))
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4
    assert greedy(merged, ids, tokenizer) == greedy(reference, ids, ref_tok)

    (row,) = repo.list_artifacts(
        registry(), training_job_id=trained.strong.training_job_id, artifact_type="merged_model"
    )
    assert row.base_model == trained.strong.base_model and row.metadata["merged_from"] == trained.strong.id
    assert trained.storage.exists(f"jobs/{trained.strong.training_job_id}/merged/{layout.MANIFEST}")
    code, out = cli("export", trained.strong.id, "--out", str(out_dir))
    assert code == 2 and "not an empty directory" in out


def test_download_verifies_the_manifest(trained: Trained, tmp_path: Path) -> None:
    code, out = cli("download", trained.weak.id, "--out", str(tmp_path / "copy"))
    assert code == 0, out
    source = trained.adapter_dir(trained.weak)
    for path in source.rglob("*"):
        if path.is_file():
            assert (tmp_path / "copy" / path.relative_to(source)).read_bytes() == path.read_bytes()

    weights = source / "adapter_model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped
        code, out = cli("download", trained.weak.id, "--out", str(tmp_path / "altered"))
        assert code == 1 and "does not match its manifest" in out
        assert not (tmp_path / "altered").exists()
        code, out = cli("generate", trained.weak.id, "--prompt", "hi")  # a cached copy does not hide it
        assert code == 1 and "does not match its manifest" in out
        weights.unlink()
        code, out = cli("download", trained.weak.id, "--out", str(tmp_path / "missing"))
        assert code == 1 and "adapter_model.safetensors" in out and "missing" in out
        assert not (tmp_path / "missing").exists()
    finally:
        weights.write_bytes(original)
    code, out = cli("download", trained.weak.id, "--url")
    assert code == 2 and "--url needs S3" in out


# ---------------------------------------------------------------- serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(trained: Trained) -> Iterator[tuple[str, Any]]:
    import uvicorn

    from cli.serve_openai import build_app
    from tasks.adapters import load_for_chat
    from trainer.serving import engine_from_chat

    with Resources.from_settings() as resources:
        chat = load_for_chat(resources, trained.strong.id)
    engine = engine_from_chat(chat, [chat.name]).start()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", chat
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        engine.stop()


def test_serve_answers_chat_completions_and_streams(server: tuple[str, Any]) -> None:
    url, chat = server
    name = chat.name
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    with httpx.Client(base_url=url, timeout=60) as http:
        models = http.get("/models").json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == [name]

        body = http.post("/chat/completions", json={"model": name, "messages": messages, "max_tokens": 12})
        assert body.status_code == 200, body.text
        completion = body.json()
        assert completion["object"] == "chat.completion"
        choice = completion["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        from trainer.inference import GenerationOptions

        expected = chat.generate(messages, GenerationOptions(max_new_tokens=12))
        assert choice["message"]["content"] == expected.text
        assert completion["usage"]["completion_tokens"] == len(expected.tokens)

        pieces, finish, ids = [], None, set()
        with http.stream(
            "POST",
            "/chat/completions",
            json={"model": name, "messages": messages, "max_tokens": 12, "stream": True},
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            chunk = json.loads(line[len("data: ") :])
            assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == name
            ids.add(chunk["id"])
            delta = chunk["choices"][0]["delta"]
            pieces.append(delta.get("content", ""))
            finish = chunk["choices"][0]["finish_reason"] or finish
        assert "".join(pieces).strip() == expected.text and finish == choice["finish_reason"]
        assert len(ids) == 1  # one completion id across the stream

        unknown = http.post("/chat/completions", json={"model": "gpt-4o", "messages": messages})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        for bad in (
            {"model": name},
            {"model": name, "messages": [{"role": "wizard", "content": "x"}]},
            "not json",
        ):
            response = (
                http.post("/chat/completions", content=bad, headers={"content-type": "application/json"})
                if isinstance(bad, str)
                else http.post("/chat/completions", json=bad)
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
        last_not_user = http.post(
            "/chat/completions", json={"model": name, "messages": [{"role": "assistant", "content": "hi"}]}
        )
        assert last_not_user.status_code == 400 and "last message" in last_not_user.json()["error"]["message"]


# ---------------------------------------------------------------- flows


def test_flows_evaluate_and_promote_with_markdown_artifacts(trained: Trained, prefect_harness: str) -> None:
    from prefect.client.orchestration import get_client

    from flows.evaluate_adapter import evaluate_adapter
    from flows.promote_adapter import promote_adapter

    result = evaluate_adapter(trained.strong.id, against="base")
    assert (
        result["candidate"]["artifact_id"] == trained.strong.id and result["against"]["artifact_id"] is None
    )
    promoted = promote_adapter(trained.strong.id, to="production")  # or already is
    assert promoted["artifact_id"] == trained.strong.id and promoted["deployment_status"] == "production"
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts() if a.key}
    assert f"adapter-eval-{trained.strong.id}" in keys
    assert f"adapter-promotion-{trained.strong.id}" in keys


def test_feedback_stats_cli(trained: Trained) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.unit.test_adapters_promotion import load_lexybrain

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    load_lexybrain(registry(), t0)
    code, out = cli(
        "feedback-stats", "--since", "2026-03-01", "--until", (t0 + timedelta(days=1)).isoformat(), "--json"
    )
    assert code == 0, out
    rows = {r["model_version"]: r for r in json.loads(out)}
    assert (rows["v1"]["rated_responses"], rows["v1"]["positive"], rows["v1"]["ratings"]) == (3, 3, 4)
    assert rows["v1"]["ci95_low"] < 0.75 < rows["v1"]["ci95_high"]
    assert (rows["v2"]["positive"], rows["v2"]["negative"], rows["v2"]["neutral"]) == (1, 2, 1)
    code, out = cli("feedback-stats", "--since", "yesterday")
    assert code == 2
    shutil.rmtree(trained.home / "cache", ignore_errors=True)


def test_served_names_in_the_cli(trained: Trained, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from tests.unit.test_served_names import rate

    code, out = cli("artifacts", "list", "--json")
    assert code == 0, out
    names = {a["id"]: a["served_name"] for a in json.loads(out)}
    served = names[trained.weak.id]
    assert served.endswith("-" + uuid.UUID(trained.weak.id).hex[:8]) and len(served) <= 40
    code, out = cli("artifacts", "list")
    assert code == 0 and served in out
    # A served name is accepted where an artifact id is.
    code, out = cli("download", served, "--out", str(tmp_path / "by-name"))
    assert code == 0, out
    assert (tmp_path / "by-name" / "adapter_model.safetensors").is_file()
    code, out = cli("download", "no-such-adapter-00000000", "--out", str(tmp_path / "none"))
    assert code == 2 and "no artifact is served as" in out
    # Ratings join to the adapter; a version that names none is reported on its own line.
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    rate(registry(), served, ["positive", "negative"], t0)
    rate(registry(), "someone-elses-model", ["positive"], t0)
    code, out = cli("feedback-stats", "--since", "2027-01-01", "--until", "2027-01-02")
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith(served) and " 2 " in line for line in lines)
    unknown = next(line for line in lines if line.startswith("unknown model_version"))
    assert unknown.split()[2:5] == ["1", "1", "1"]  # rated responses, ratings, positive
    assert "someone-elses-model" in out
    code, out = cli("feedback-stats", "--since", "2027-01-01", "--until", "2027-01-02", "--json")
    rows = {r["model_version"]: r for r in json.loads(out)}
    assert rows[served]["artifact_id"] == trained.weak.id
    assert rows["someone-elses-model"]["artifact_id"] is None


def test_chat_streams_keeps_history_and_resets(trained: Trained) -> None:
    from trainer.inference import ChatModel

    seen: list[list[dict[str, str]]] = []
    original = ChatModel.stream

    def recording_stream(self, messages, options=None):  # type: ignore[no-untyped-def]
        seen.append([dict(m) for m in messages])
        return original(self, messages, options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChatModel, "stream", recording_stream)
        result = CliRunner().invoke(
            app,
            ["chat", trained.strong.id, "--system", SYSTEM, "--max-new-tokens", "6"],
            input="hello\nand then?\n/reset\nagain\n/exit\n",
        )
    assert result.exit_code == 0, result.output
    assert result.output.count("assistant> ") == 3 and "(history cleared)" in result.output
    assert [len(m) for m in seen] == [2, 4, 2]  # system + user; + reply + user; reset
    assert seen[1][2]["role"] == "assistant" and seen[1][3]["content"] == "and then?"


def test_eval_on_a_registered_evaluation_set(trained: Trained) -> None:
    """Issue 25: both adapters sit the same registered exam; the record names it."""
    code, out = cli("evalset", "create", "exam", "--from", str(SAMPLE_DATASET), "--take", "4", "--json")
    assert code == 0, out
    exam = json.loads(out)
    code, out = cli("eval", trained.weak.id, "--against", trained.strong.id, "--evalset", "exam",
                    "--samples", "0", "--json")  # fmt: skip
    assert code == 0, out
    record = json.loads(out)
    assert record["evaluation_set"] == "exam@1" and record["eval_set_sha256"] == exam["sha256"]
    assert record["conversations"] == 4 and record["eval_set"] == "evaluation set 'exam' (version 1)"
    assert record["candidate"]["tokens"] == record["against"]["tokens"] > 0
    code, out = cli("eval", trained.weak.id, "--against", trained.strong.id, "--evalset", "nothing")
    assert code == 2 and "no evaluation set is named 'nothing'" in out


def test_eval_with_the_judge_on_real_replies(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25: the judge sees both adapters' real replies to every prompt of the exam, in both
    orders; a judge that always says A is cancelled by the swap."""
    from tests.fixtures.http import serve_http
    from tests.unit.test_judge import handler

    code, out = cli(
        "evalset", "create", "judged", "--from", str(SAMPLE_DATASET), "--take", "1", "--seed", "5"
    )
    assert code == 0, out
    always_a = handler(lambda _: "VERDICT: A")
    with serve_http(always_a) as url:
        monkeypatch.setenv("BRIGHTRUN_JUDGE_BASE_URL", f"{url}/v1")
        monkeypatch.setenv("BRIGHTRUN_JUDGE_MODEL", "judge")
        code, out = cli("eval", trained.weak.id, "--against", trained.strong.id, "--evalset", "judged",
                        "--judge", "--samples", "1", "--json")  # fmt: skip
    assert code == 0, out
    judged = json.loads(out)["judge"]
    assert judged["prompts"] == 1 and len(judged["judgements"]) == 2 and judged["win_rate"] == 0.5
    assert len(always_a.calls) == 2
    monkeypatch.delenv("BRIGHTRUN_JUDGE_BASE_URL")
    code, out = cli("eval", trained.weak.id, "--against", trained.strong.id, "--evalset", "judged", "--judge")
    assert code == 2 and "BRIGHTRUN_JUDGE_BASE_URL" in out


def test_a_judge_that_answers_garbage_or_times_out_fails_the_evaluation(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: a broken judge is an error naming it, never a silent pass: `eval --judge`
    exits non-zero and records no evaluation (the gate would otherwise read it)."""
    from tests.fixtures.http import serve_http
    from tests.unit.test_judge import handler

    code, out = cli(
        "evalset", "create", "judge-faults", "--from", str(SAMPLE_DATASET), "--take", "2", "--seed", "6"
    )
    assert code == 0, out

    def evaluations() -> int:
        events = repo.list_events(registry(), trained.weak.training_job_id)
        return sum(e.type == "adapter_evaluated" for e in events)

    before = evaluations()
    monkeypatch.setenv("BRIGHTRUN_JUDGE_MODEL", "judge")
    monkeypatch.setenv("BRIGHTRUN_JUDGE_RETRIES", "0")
    args = ("eval", trained.weak.id, "--against", trained.strong.id, "--evalset", "judge-faults", "--judge")
    with serve_http(handler(lambda _: "I like both replies.")) as url:
        monkeypatch.setenv("BRIGHTRUN_JUDGE_BASE_URL", f"{url}/v1")
        code, out = cli(*args)
    assert code == 1 and f"the judge at {url}/v1 answered 'I like both replies.'" in out, out
    monkeypatch.setenv("BRIGHTRUN_JUDGE_TIMEOUT_SECONDS", "0.3")
    with serve_http(handler(lambda _: "VERDICT: A", delay=2.0)) as url:
        monkeypatch.setenv("BRIGHTRUN_JUDGE_BASE_URL", f"{url}/v1")
        code, out = cli(*args)
    assert code == 1 and f"the judge at {url}/v1 did not answer within 0.3 s" in out, out
    assert evaluations() == before
