"""`brightrun serve` under ordinary load (issue 20 item 6) and with several adapters (issue 24).

A real uvicorn server over the tiny model on loopback, spoken to over HTTP as the `openai`
client speaks it. Where a test needs generation to take a while (a disconnect, a full
queue), the model is wrapped so each forward pass waits a little: the server's code is the
same, only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from brightrun.errors import InputError
from cli.serve_openai import ServeSettings, build_app, check_bind
from tests.integration.test_adapters import PROMPT, SYSTEM, Trained, cli, trained  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def chat(tiny_model: Path) -> Any:
    """The tiny base model alone: what these tests exercise is the server, not an adapter."""
    from trainer.inference import BaseModelSpec, load_chat_model

    return load_chat_model(BaseModelSpec(str(tiny_model)), None, "tiny")


class SlowModel:
    """The model, each forward pass `delay` seconds late and, with a `gate`, held until the
    gate opens (the model certainly busy, however fast the machine); counts the passes."""

    def __init__(self, model: Any, delay: float, gate: threading.Event | None = None) -> None:
        self._model, self.delay, self.gate, self.calls = model, delay, gate, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(timeout=300)
        time.sleep(self.delay)
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(engine: Any, settings: ServeSettings | None = None) -> Iterator[str]:
    """The app on a free loopback port; yields its base URL (no /v1)."""
    import uvicorn

    engine.start()
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(build_app(engine, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        engine.stop()


def engine_of(chat: Any, *, slow: float = 0.0, gate: threading.Event | None = None, **kwargs: Any) -> Any:
    from trainer.serving import engine_from_chat

    engine = engine_from_chat(chat, ["tiny"], **kwargs)
    if slow or gate is not None:
        engine.model = SlowModel(chat.model, slow, gate)
    return engine


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def record_tickets(engine: Any) -> list[Any]:
    tickets: list[Any] = []
    submit = engine.submit

    def spy(*args: Any, **kwargs: Any) -> Any:
        ticket = submit(*args, **kwargs)
        tickets.append(ticket)
        return ticket

    engine.submit = spy
    return tickets


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- a body too big


def test_a_52_mb_body_is_refused_unread(chat: Any) -> None:
    total = 52 * 1024 * 1024
    with running(engine_of(chat)) as base:
        port = int(base.rsplit(":", 1)[1])
        rss_before = _rss_kb()
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {total}\r\n\r\n"
            )
            sock.sendall(head.encode())
            answer = b""
            chunk = b" " * 65536
            sock.settimeout(0.05)
            while b"\r\n\r\n" not in answer:
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    answer += sock.recv(65536)
                    continue
                if sent < total:
                    try:
                        sock.settimeout(5)
                        sock.sendall(chunk)
                        sent += len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        sent = total  # the server closed on us: read what it said
                    finally:
                        sock.settimeout(0.05)
            sock.settimeout(10)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while True:
                    more = sock.recv(65536)
                    if not more:
                        break
                    answer += more
        status = answer.split(b"\r\n", 1)[0]
        assert b" 413 " in status, answer[:300]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")
        assert "1000000 bytes" in body["error"]["message"] and body["error"]["code"] == "request_too_large"
        assert sent < total  # refused before the body was sent, let alone read
        assert _rss_kb() - rss_before < 40 * 1024  # nowhere near 52 MB held

        # A body within the limit but with too many stop strings is still a located 400.
        ok = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "stop": ["a", "b", "c", "d", "e"]},
            timeout=60,
        )
        assert ok.status_code == 400 and ok.json()["error"]["param"] == "stop"


def test_a_chunked_body_over_the_limit_is_cut_off(chat: Any) -> None:
    settings = ServeSettings(max_body_bytes=4096)

    def body() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(4):
            yield b"x" * 2048
        yield b'"}]}'

    with running(engine_of(chat), settings) as base:
        response = httpx.post(f"{base}/v1/chat/completions", content=body(), timeout=60)
    assert response.status_code == 413 and "4096 bytes" in response.json()["error"]["message"]


# ---------------------------------------------------------------- load


def test_health_answers_while_100_requests_are_in_flight(chat: Any) -> None:
    """/health and /v1/models answer while the model is held mid-batch with requests queued
    behind it: they never wait for the model. (How fast they answer is a figure for
    benchmarks/bench_serve.py, not a bound here.)"""
    model_may_run = threading.Event()
    engine = engine_of(chat, gate=model_may_run, queue_size=200, max_batch=8)

    async def scenario(base: str) -> tuple[list[httpx.Response], httpx.Response, httpx.Response, bool]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
            done = 0

            async def ask(i: int) -> httpx.Response:
                nonlocal done
                response = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "tiny",
                        "messages": [{"role": "user", "content": f"hi {i}"}],
                        "max_tokens": 8,  # the point is the queue, not the replies
                    },
                )
                done += 1
                return response

            tasks = [asyncio.create_task(ask(i)) for i in range(100)]
            try:
                # The first batch is held in the model; the rest queue behind it.
                while engine.waiting < 100 - 8:
                    await asyncio.sleep(0.01)
                async with httpx.AsyncClient(base_url=base, timeout=60) as probe:
                    health = await probe.get("/health")
                    models = await probe.get("/v1/models")
                answered_before_any_reply = done == 0
            finally:
                model_may_run.set()
            return await asyncio.gather(*tasks), health, models, answered_before_any_reply

    with running(engine) as base:
        replies, health, models, answered_before_any_reply = asyncio.run(scenario(base))
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny"
    assert answered_before_any_reply  # while the model held every request
    assert [r.status_code for r in replies] == [200] * 100
    assert max(engine.batch_sizes) > 1  # waiting requests were generated together
    assert sum(engine.batch_sizes) == 100


def test_batched_greedy_replies_equal_one_at_a_time(chat: Any) -> None:
    from trainer.inference import GenerationOptions

    prompts = [f"tell me about saving, part {i}" + " please" * i for i in range(6)]
    expected = [
        chat.generate([{"role": "user", "content": p}], GenerationOptions(max_new_tokens=16)).text
        for p in prompts
    ]
    engine = engine_of(chat, slow=0.01, max_batch=8)
    with running(engine) as base, httpx.Client(base_url=base, timeout=600) as http:
        # The first request holds the model while the rest queue up behind it.
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": prompts[i]}],
                "max_tokens": 16,
            }
            results[i] = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"][
                "content"
            ]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(6)] == expected
    assert max(engine.batch_sizes) > 1


def test_a_full_queue_answers_429_with_retry_after(chat: Any) -> None:
    engine = engine_of(chat, slow=0.05, queue_size=1, max_batch=1)
    tickets = record_tickets(engine)
    with (
        running(engine, ServeSettings(queue_size=1, retry_after_s=3)) as base,
        httpx.Client(base_url=base, timeout=600) as http,
    ):
        long = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1500, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=long) as first:
            lines = first.iter_lines()
            next(lines)  # the model is busy with it
            wait_for(lambda: engine.batch_sizes == [1], "the first request to run")
            queued: dict[str, httpx.Response] = {}
            waiter = threading.Thread(
                target=lambda: queued.update(
                    r=http.post(
                        "/v1/chat/completions",
                        json={"model": "tiny", "messages": MESSAGES, "max_tokens": 3},
                    )
                )
            )
            waiter.start()
            wait_for(lambda: engine.waiting == 1, "the second request to queue")
            full = http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
            assert full.status_code == 429 and full.headers["retry-after"] == "3"
            assert full.json()["error"]["type"] == "rate_limit_error"
            assert full.json()["error"]["code"] == "queue_full"
        # Leaving the stream disconnects it; the queued request then gets the model.
        waiter.join(timeout=600)
    assert queued["r"].status_code == 200
    assert tickets[0].cancelled and len(tickets[0].generated) < 1500


# ---------------------------------------------------------------- disconnects


def test_a_client_that_disconnects_frees_the_model(chat: Any) -> None:
    engine = engine_of(chat, slow=0.05, max_batch=1)
    tickets = record_tickets(engine)
    with running(engine) as base, httpx.Client(base_url=base, timeout=600) as http:
        long = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1500, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=long) as stream:
            lines = stream.iter_lines()
            next(lines)
            next(lines)
        wait_for(lambda: engine.cancelled_seen >= 1, "the worker to see the streaming client leave")
        streamed = len(tickets[0].generated)
        assert streamed < 1500

        # A non-streaming client that gives up: noticed while it waits, not after 1500 tokens.
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": MESSAGES, "max_tokens": 1500},
                timeout=httpx.Timeout(600, read=1.0),
            )
        wait_for(lambda: engine.cancelled_seen >= 2, "the worker to see the waiting client leave")
        assert len(tickets[1].generated) < 1500

        after = http.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
        )
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 4
    assert len(tickets[0].generated) == streamed  # nothing more was generated for it


# ---------------------------------------------------------------- the context


def test_max_tokens_at_the_context_limit_is_refused_never_truncated(chat: Any) -> None:
    context = chat.max_length
    assert context == 2048
    with running(engine_of(chat)) as base, httpx.Client(base_url=base, timeout=600) as http:
        over = http.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": context}
        )
        assert over.status_code == 400, over.text
        error = over.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        assert "context length of 2048 tokens" in error["message"]
        prompt_tokens = int(error["message"].split("(")[1].split(" ")[0])
        fits = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "stream": False},
        )
        assert fits.status_code == 200 and fits.json()["usage"]["prompt_tokens"] == prompt_tokens
        huge = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "save money " * 1500}]},
        )
        assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    from trainer.inference import GenerationOptions

    with pytest.raises(InputError, match="context length of 2048"):  # the CLI's generate and chat too
        chat.generate(MESSAGES, GenerationOptions(max_new_tokens=context))


# ---------------------------------------------------------------- stop


def test_stop_strings_end_the_reply(chat: Any) -> None:
    with running(engine_of(chat)) as base, httpx.Client(base_url=base, timeout=600) as http:
        full = http.post(
            "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 24}
        ).json()
        text = full["choices"][0]["message"]["content"]
        assert len(text) > 12
        stop = text[8:11]
        expected = text[: text.index(stop)].strip()
        cut = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": MESSAGES, "max_tokens": 24, "stop": stop},
        ).json()
        assert cut["choices"][0]["message"]["content"] == expected
        assert cut["choices"][0]["finish_reason"] == "stop"
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": MESSAGES,
                "max_tokens": 24,
                "stop": [stop],
                "stream": True,
            },
        ) as stream:
            chunks = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: {")]
    pieces = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert pieces.strip() == expected and stop not in pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------- API key


def test_an_api_key_guards_every_route_but_health(chat: Any) -> None:
    with (
        running(engine_of(chat), ServeSettings(api_key="s3cret")) as base,
        httpx.Client(base_url=base, timeout=600) as http,
    ):
        assert http.get("/health").status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            refused = http.get("/v1/models", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["type"] == "authentication_error"
        refused = http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
        assert refused.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert http.get("/v1/models", headers=good).status_code == 200
        reply = http.post(
            "/v1/chat/completions",
            headers=good,
            json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2},
        )
        assert reply.status_code == 200


def test_a_public_bind_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIGHTRUN_SERVE_API_KEY", raising=False)
    with pytest.raises(InputError, match="without an API key"):
        check_bind("0.0.0.0", ServeSettings())
    check_bind("0.0.0.0", ServeSettings(api_key="k"))
    check_bind("127.0.0.1", ServeSettings())
    code, out = cli("serve", "no-such-artifact", "--host", "0.0.0.0")  # refused before any lookup
    assert code == 2 and "BRIGHTRUN_SERVE_API_KEY" in out
    code, out = cli("serve", "--adapter", "no-equals-sign")
    assert code == 2 and "NAME=ARTIFACT" in out
    code, out = cli("serve", "x", "--queue-size", "0")
    assert code == 2 and "queue_size" in out


# ---------------------------------------------------------------- several adapters


def test_two_adapters_served_by_name_in_one_process(trained: Trained) -> None:  # noqa: F811
    from brightrun.resources import Resources
    from tasks.adapters import load_for_chat
    from tasks.adapters.serving import AdapterChoice, load_for_serving
    from trainer.inference import GenerationOptions

    with Resources.from_settings() as resources:
        engine = load_for_serving(
            resources,
            [AdapterChoice(trained.strong.id, "coach"), AdapterChoice(trained.weak.training_job_id)],
        )
        own = {
            name: load_for_chat(resources, art.id).generate(MESSAGES, GenerationOptions(max_new_tokens=12))
            for name, art in (("coach", trained.strong), (trained.weak.id, trained.weak))
        }
    assert own["coach"].tokens != own[trained.weak.id].tokens
    with running(engine) as base, httpx.Client(base_url=base, timeout=600) as http:
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert listed == ["coach", trained.weak.served_name]  # the registry's name, not the id
        replies: dict[str, Any] = {}

        def ask(name: str) -> None:
            body = {"model": name, "messages": MESSAGES, "max_tokens": 12}
            replies[name] = http.post("/v1/chat/completions", json=body).json()

        threads = [threading.Thread(target=ask, args=(n,)) for n in ("coach", trained.weak.id) * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        by_alias = http.post(
            "/v1/chat/completions",
            json={"model": trained.weak.training_job_id, "messages": MESSAGES, "max_tokens": 12},
        ).json()
        unknown = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    for name, reply in replies.items():
        assert reply["model"] == name
        assert reply["choices"][0]["message"]["content"] == own[name].text
        assert reply["usage"]["completion_tokens"] == len(own[name].tokens)
    assert by_alias["choices"][0]["message"]["content"] == own[trained.weak.id].text
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": unknown.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert "coach" in unknown.json()["error"]["message"]


def test_cut_at_stop_finds_the_earliest() -> None:
    from trainer.serving import cut_at_stop

    assert cut_at_stop("one. two! three", ["!", "."]) == 3
    assert cut_at_stop("nothing here", ["?"]) is None
    assert cut_at_stop("empty stops", [""]) is None
