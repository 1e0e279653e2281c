"""The pairwise judge (issue 25) against real local OpenAI-compatible HTTP servers: one that
prefers the better reply, one that always says the first position (the swap cancels it), one
that times out, one that answers garbage; and the gate reading the judge's verdict."""

from __future__ import annotations

import http.server
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from brightrun.registry.promotion import AdapterRow, EvaluationRecord, ModelScore, gate_failure
from brightrun.settings import JudgeSettings, load_settings
from tasks.adapters.judge import JudgeError, build_messages, judge_samples, parse_verdict, wilson
from tests.fixtures.http import serve_http

GOOD = "I hear how stressful this is. Let's list your accounts together tomorrow."
BAD = "Buy leveraged ETFs now."
SAMPLES = [{"prompt": f"question {i}", "candidate": GOOD, "against": BAD} for i in range(6)]


def handler(answer: Callable[[str], str], *, delay: float = 0.0) -> type[http.server.BaseHTTPRequestHandler]:
    """A chat-completions endpoint whose reply text is `answer(user message)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        calls: list[dict] = []

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            Handler.calls.append(body)
            if delay:
                time.sleep(delay)
            content = answer(body["messages"][-1]["content"])
            payload = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
            }).encode()  # fmt: skip
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (the timeout test)

    return Handler


def prefers_the_kind_reply(user: str) -> str:
    reply_a = user.split("Reply A:", 1)[1].split("Reply B:", 1)[0]
    return "VERDICT: A" if "I hear" in reply_a else "VERDICT: B"


def settings(url: str, **kw: object) -> JudgeSettings:
    return JudgeSettings(base_url=f"{url}/v1", model="judge-model", api_key="sk-test", **kw)


def test_a_judge_that_prefers_the_better_reply() -> None:
    h = handler(prefers_the_kind_reply)
    with serve_http(h) as url:
        result = judge_samples(settings(url), SAMPLES)
    assert result.win_rate == 1.0 and result.prompts == 6 and len(result.judgements) == 12
    assert {j.candidate_position for j in result.judgements} == {"A", "B"}  # both orders asked
    assert 0.7 < result.ci95_low < 1.0 and result.ci95_high == pytest.approx(1.0)
    assert (
        h.calls[0]["model"] == "judge-model" and "Financial accuracy" in h.calls[0]["messages"][0]["content"]
    )
    # The other way round: the candidate is the worse one.
    swapped = [{**s, "candidate": BAD, "against": GOOD} for s in SAMPLES]
    with serve_http(handler(prefers_the_kind_reply)) as url:
        worse = judge_samples(settings(url), swapped)
    assert worse.win_rate == 0.0 and worse.ci95_high < 0.5


def test_position_swapping_cancels_a_judge_that_always_says_a() -> None:
    with serve_http(handler(lambda _: "VERDICT: A")) as url:
        result = judge_samples(settings(url), SAMPLES)
    assert result.win_rate == 0.5 and result.ci95_low < 0.5 < result.ci95_high


def test_a_judge_that_times_out_is_an_error_naming_it() -> None:
    with serve_http(handler(lambda _: "VERDICT: A", delay=2.0)) as url:
        t0 = time.monotonic()
        with pytest.raises(JudgeError) as info:
            judge_samples(settings(url, timeout_seconds=0.3, retries=0), SAMPLES)
        assert time.monotonic() - t0 < 2.0
    assert f"the judge at {url}/v1 did not answer within 0.3 s" in str(info.value)
    assert "nothing was counted" in str(info.value)


def test_a_judge_that_answers_garbage_is_an_error_showing_what_came_back() -> None:
    with (
        serve_http(handler(lambda _: "Both are lovely, I think the first.")) as url,
        pytest.raises(JudgeError) as info,
    ):
        judge_samples(settings(url), SAMPLES)
    assert f"the judge at {url}/v1 answered 'Both are lovely, I think the first.'" in str(info.value)


def test_a_judge_that_is_not_there_is_an_error() -> None:
    with serve_http(handler(lambda _: "")) as url:
        pass  # the port is closed again
    with pytest.raises(JudgeError, match=f"the judge at {url}/v1 could not be asked"):
        judge_samples(settings(url, retries=0), SAMPLES)


def test_verdicts_are_read_strictly() -> None:
    assert [parse_verdict(t, "u") for t in ("VERDICT: A", " verdict: b\n", "VERDICT:TIE")] == [
        "A",
        "B",
        "tie",
    ]
    for garbage in ("A", "VERDICT: A because", "VERDICT: C", "", None, "VERDICT: A\nVERDICT: B"):
        with pytest.raises(JudgeError):
            parse_verdict(garbage, "u")


def test_the_prompt_states_the_rubric_and_both_replies() -> None:
    system, user = build_messages("RUBRIC TEXT", "help", "one", "two")
    assert system["content"].startswith("RUBRIC TEXT") and "VERDICT: TIE" in system["content"]
    assert user["content"].index("one") < user["content"].index("Reply B:") < user["content"].index("two")


def test_wilson_interval() -> None:
    low, high = wilson(6, 12)
    assert low == pytest.approx(0.2538, abs=1e-3) and high == pytest.approx(0.7462, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_judge_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BRIGHTRUN_HOME", str(tmp_path))
    assert load_settings().judge is None
    monkeypatch.setenv("BRIGHTRUN_JUDGE_BASE_URL", "http://judge.local/v1")
    with pytest.raises(ValueError, match="BRIGHTRUN_JUDGE_MODEL"):
        _ = load_settings().judge
    monkeypatch.setenv("BRIGHTRUN_JUDGE_MODEL", "gpt-strong")
    monkeypatch.setenv("BRIGHTRUN_JUDGE_API_KEY", "sk-secret")
    judge = load_settings().judge
    assert judge is not None and judge.model == "gpt-strong" and "sk-secret" not in repr(judge)


def _row(id_: str) -> AdapterRow:
    from datetime import UTC, datetime

    return AdapterRow(id=id_, training_job_id="j", artifact_type="lora_adapter", storage_path="s",
                      file_size_bytes=None, sha256=None, base_model="m", validation_loss=None,
                      validation_perplexity=None, deployment_status="stored", deployed_at=None,
                      metadata={}, created_at=datetime.now(UTC))  # fmt: skip


def test_the_gate_refuses_a_candidate_the_judge_finds_clearly_worse() -> None:
    def record(judge: dict | None) -> EvaluationRecord:
        side = ModelScore(artifact_id="c", label="c", loss=1.0, perplexity=2.7, tokens=10)
        return EvaluationRecord(candidate=side, against=side.model_copy(update={"artifact_id": "p"}),
                                base_model="m", eval_set="evaluation set 'exam' (version 1)",
                                eval_set_sha256="0" * 64, evaluation_set="exam@1", conversations=3,
                                judge=judge)  # fmt: skip

    candidate, production = _row("c"), _row("p")
    assert gate_failure(candidate, production, record(None)) is None  # equal loss, no judge: passes
    even = {"win_rate": 0.5, "ci95_low": 0.25, "ci95_high": 0.75}
    assert gate_failure(candidate, production, record(even)) is None
    worse = {"win_rate": 0.1, "ci95_low": 0.02, "ci95_high": 0.4}
    assert "the judge prefers the production adapter p" in (
        gate_failure(candidate, production, record(worse)) or ""
    )
