"""`brightrun serve`: an adapter behind an OpenAI-compatible HTTP API.

`GET /v1/models` and `POST /v1/chat/completions` (plain JSON, or server-sent events with
`"stream": true`), in the shapes the `openai` client reads, so an app that speaks chat
completions can be pointed at a local adapter by changing its base URL. Errors come in
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: a malformed body or bad
parameters → 400, an unknown model name → 404. Nothing here loads torch; the `ChatModel`
is built by the caller (tasks.adapters.load_for_chat).

Loopback only by default: there is no authentication.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from brightrun.errors import InputError

if TYPE_CHECKING:
    from trainer.inference import ChatModel, Generation

DEFAULT_MAX_TOKENS = 256


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


def build_app(chat: ChatModel, names: Sequence[str]) -> FastAPI:
    """The HTTP app over one loaded model; `names` are the model names it answers to (the
    first is the one `/v1/models` lists)."""
    accepted = list(dict.fromkeys(n for n in names if n))
    created = int(time.time())
    app = FastAPI(title="BrightRun adapter", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return _error(400, "malformed request: " + "; ".join(problems), "invalid_request")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": accepted[0], "object": "model", "created": created, "owned_by": "brightrun"}],
        }

    @app.get("/v1/models/{name:path}")
    def get_model(name: str) -> dict[str, Any]:
        if name not in accepted:
            raise APIError(
                404, f"model {name!r} is not served here; try {accepted[0]!r}", code="model_not_found"
            )
        return {"id": name, "object": "model", "created": created, "owned_by": "brightrun"}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        from trainer.inference import GenerationOptions

        if body.model not in accepted:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; this server answers to {', '.join(accepted)}",
                code="model_not_found",
                param="model",
            )
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        options = GenerationOptions(
            max_new_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=body.temperature or 0.0,
            top_p=body.top_p or 1.0,
            seed=body.seed,
        )
        # Renders the prompt now, so a bad conversation is a 400 before any stream starts.
        chat.prompt_ids(messages, options.max_new_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(
                _sse(chat, messages, options, completion_id, body.model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result = chat.generate(messages, options)
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

    return app


def _usage(result: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": len(result.tokens),
        "total_tokens": result.prompt_tokens + len(result.tokens),
    }


def _sse(
    chat: ChatModel, messages: list[dict[str, str]], options: Any, cid: str, model: str
) -> Iterator[str]:
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

    from trainer.inference import Generation

    yield chunk({"role": "assistant", "content": ""})
    try:
        for piece in chat.stream(messages, options):
            if isinstance(piece, Generation):
                yield chunk({}, piece.finish_reason, usage=_usage(piece))
            else:
                yield chunk({"content": piece})
    except Exception as exc:  # the status line is already sent: report in the stream
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def serve(chat: ChatModel, names: Sequence[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(build_app(chat, names), host=host, port=port, log_level="info")
