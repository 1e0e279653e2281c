"""`brightrun serve`: an adapter behind an OpenAI-compatible HTTP API.

`GET /v1/models` and `POST /v1/chat/completions` (plain JSON, or server-sent events with
`"stream": true`), in the shapes the `openai` client reads, so an app that speaks chat
completions can be pointed at a local adapter by changing its base URL. Errors come in
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: a malformed body or bad
parameters → 400, an unknown model name → 404. Nothing here loads torch; the
`BatchingEngine` (trainer/serving.py) is built by the caller (tasks.adapters.serving.load_for_serving).

Staying up under load (issue 20 item 6): a body over `max_body_bytes` is refused with 413
before it is read; a prompt plus `max_tokens` over the context is a 400 naming the limit;
requests wait in a bounded queue (429 with `Retry-After` when full) for one worker that
batches them; a client that disconnects is cancelled at the next token; `/health` and
`/v1/models` run on the event loop and never wait for the model. With an API key every
route but `/health` needs `Authorization: Bearer KEY` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from brightrun.errors import InputError

if TYPE_CHECKING:
    from trainer.inference import Generation
    from trainer.serving import BatchingEngine, Ticket

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class ServeSettings(BaseSettings):
    """How `brightrun serve` protects itself; `BRIGHTRUN_SERVE_*` or the command's flags."""

    model_config = SettingsConfigDict(env_prefix="BRIGHTRUN_SERVE_", extra="ignore")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413, unread")
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; more get 429")
    max_batch: int = Field(8, ge=1, le=256, description="requests generated together as one batch")
    retry_after_s: int = Field(1, ge=1, description="the Retry-After a 429 carries")
    api_key: SecretStr | None = Field(None, description="when set, requests need Authorization: Bearer KEY")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(BaseModel):
    """The fields we honour; others the clients send (user, metadata...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stop: str | list[str] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 sequences", code="invalid_request", param="stop")
        return tuple(s for s in stops if s)


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def _error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
        headers=headers,
    )


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class BodyLimit:
    """Refuses a body over `limit` bytes with 413 before the app sees it.

    A declared Content-Length over the limit is refused unread; a chunked body is counted as
    it arrives and refused at the limit, so at most `limit` bytes are ever held.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        whole = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        response = _error(
            413,
            f"the request body is over the server's limit of {self.limit} bytes (max_body_bytes)",
            "request_too_large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class ApiKeyGuard:
    """Every route but `/health` needs `Authorization: Bearer KEY` (401 otherwise); a load
    balancer probes `/health` without the key."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                response = _error(
                    401,
                    "missing or wrong API key: send Authorization: Bearer KEY",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: BatchingEngine, settings: ServeSettings | None = None) -> FastAPI:
    """The HTTP app over a started engine; the names it answers to are the engine's."""
    settings = settings or ServeSettings()
    created = int(time.time())
    key = settings.api_key.get_secret_value() if settings.api_key else None
    listed = [s.name for s in engine.served]
    app = FastAPI(title="BrightRun adapter", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return _error(400, "malformed request: " + "; ".join(problems), "invalid_request")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": str(settings.retry_after_s)} if exc.status == 429 else None
        return _error(exc.status, exc.message, exc.code, exc.param, headers)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        from trainer.serving import ContextTooLong

        code = "context_length_exceeded" if isinstance(exc, ContextTooLong) else "invalid_request"
        return _error(400, str(exc), code, "max_tokens" if code == "context_length_exceeded" else None)

    # Health and listing are `async` on purpose: they run on the event loop, never in the
    # thread pool behind the model, so they answer while every request waits.
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": listed, "waiting": engine.waiting, "queue_size": engine.queue_size}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "brightrun"} for n in listed
            ],
        }

    def unknown(name: str) -> APIError:
        return APIError(
            404,
            f"model {name!r} is not served here; this server answers to {', '.join(listed)}",
            code="model_not_found",
            param="model",
        )

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if engine.lookup(name) is None:
            raise unknown(name)
        return {"id": name, "object": "model", "created": created, "owned_by": "brightrun"}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        request: Request, body: ChatCompletionRequest
    ) -> dict[str, Any] | StreamingResponse:
        from trainer.inference import Generation, GenerationOptions
        from trainer.serving import QueueFull

        served = engine.lookup(body.model)
        if served is None:
            raise unknown(body.model)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        stops = body.stop_strings()
        # Renders the prompt now, so a bad conversation or an over-long one is a 400 before
        # anything is queued or streamed.
        # In the thread pool: rendering a long conversation must not hold up the event loop
        # (and with it /health).
        ids, max_new = await run_in_threadpool(
            engine.prompt_ids, served, messages, body.max_completion_tokens or body.max_tokens
        )
        options = GenerationOptions(
            max_new_tokens=max_new,
            temperature=body.temperature or 0.0,
            top_p=body.top_p or 1.0,
            seed=body.seed,
            stop=stops,
        )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        try:
            ticket = engine.submit(
                served, ids, options, lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
            )
        except QueueFull as exc:
            raise APIError(429, f"{exc}; retry after {settings.retry_after_s} s", code="queue_full") from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(
                _sse(_events(request, ticket, events), completion_id, body.model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result: Generation | None = None
        async for event in _events(request, ticket, events):
            if isinstance(event, Generation):
                result = event
        if result is None:  # the client went away: nobody reads this
            return _error(499, "the client closed the request", "client_closed")  # type: ignore[return-value]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(result),
        }

    # Plain ASGI middleware (not `@app.middleware`, whose wrapped `receive` hides a client's
    # disconnect from the endpoint). Added last runs first: the key before the body is read.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    if key is not None:
        app.add_middleware(ApiKeyGuard, key=key)  # type: ignore[arg-type]
    return app


async def _events(request: Request, ticket: Ticket, events: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """A request's events until its `Generation`; the ticket is cancelled if the client goes
    away (checked while waiting) or the reader stops early (a stream's send failed)."""
    from trainer.inference import Generation

    checked = time.monotonic()
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                event = None
            # Checked on a clock, not only when idle: tokens arriving faster than the poll
            # must not hide a client that left.
            if time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if event is None:
                continue
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Generation):
                return
    finally:
        ticket.cancel()  # a no-op once it finished


def _usage(result: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": len(result.tokens),
        "total_tokens": result.prompt_tokens + len(result.tokens),
    }


async def _sse(source: AsyncIterator[Any], cid: str, model: str) -> AsyncIterator[str]:
    from trainer.inference import Generation

    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in source:
            if isinstance(piece, Generation):
                yield chunk({}, piece.finish_reason, usage=_usage(piece))
            else:
                yield chunk({"content": piece})
    except Exception as exc:  # the status line is already sent: report in the stream
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
    finally:
        await source.aclose()  # type: ignore[attr-defined]  # cancels the ticket if we stopped early
    yield "data: [DONE]\n\n"


def check_bind(host: str, settings: ServeSettings) -> None:
    """A server reachable from other machines needs a key."""
    if host not in LOOPBACK and settings.api_key is None:
        raise InputError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use "
            "the model. Give --api-key KEY (or set BRIGHTRUN_SERVE_API_KEY), or bind to 127.0.0.1"
        )


def serve(engine: BatchingEngine, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    check_bind(host, settings)
    engine.start()
    try:
        uvicorn.run(build_app(engine, settings), host=host, port=port, log_level="info")
    finally:
        engine.stop()
