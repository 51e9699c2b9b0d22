"""The HTTP face of the server: OpenAI's endpoints over the batching engines.

FastAPI + uvicorn rather than ``transformers serve``: the latter loads models by hub name and
batches per plain model, while tunesmith serves peft adapters on a shared base, chosen per row
of one batch, with the run's own tokenizer and chat template; a small ASGI app over our own
engine keeps exactly that (and stays testable in-process). Endpoints: ``GET /health``,
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both streaming
over server-sent events or not). Every error is OpenAI's ``{"error": {...}}`` body with a 4xx
status for bad input (429 when the queue is full, 401 without the API key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.serve.engine import Engine, Event, Job, QueueFull
from tunesmith.serve.models import ServedModel
from tunesmith.serve.sampling import Sampling
from tunesmith.serve.schemas import ApiError, ChatRequest, CompletionRequest, parse_body


class Server:
    """The served models and one engine per loaded backend."""

    def __init__(
        self,
        served: Sequence[ServedModel],
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        default_max_tokens: int = 256,
        watch_cores: bool = True,
    ):
        self.models = {m.name: m for m in served}
        self.engines: dict[int, Engine] = {}
        for m in served:
            if id(m.backend) not in self.engines:
                self.engines[id(m.backend)] = Engine(
                    m.backend, max_batch=max_batch, max_queue=max_queue, watch_cores=watch_cores
                )
        self.default_max_tokens = default_max_tokens

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; served: {', '.join(self.models)}",
                param="model",
                code="model_not_found",
            )
        return self.models[name]

    def sampling(self, req, served: ServedModel, prompt_len: int) -> Sampling:
        """The request's sampling, with ``max_tokens`` checked against the context."""
        ctx = served.backend.context_length
        room = ctx - prompt_len
        if room <= 0:
            raise ApiError(
                400,
                f"this model's context is {ctx} tokens; the prompt has {prompt_len}",
                param="messages" if isinstance(req, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        limit = req.token_limit
        if limit is not None and limit > room:
            raise ApiError(
                400,
                f"max_tokens={limit} does not fit: the context is {ctx} tokens and the prompt "
                f"has {prompt_len}, leaving {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = limit if limit is not None else min(self.default_max_tokens, room)
        return Sampling(max_tokens, req.temperature, req.top_p, req.seed, req.stops)

    def submit(self, served: ServedModel, prompt: list[int], sampling: Sampling):
        """Queue a request; returns its job and the asyncio queue its events arrive on."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called by the engine thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt, served, sampling, emit)

        try:
            self.engines[id(served.backend)].submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy: {exc}", type="rate_limit_error") from None
        return job, events

    def stop(self) -> None:
        for engine in self.engines.values():
            engine.stop()


def create_app(server: Server, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app over ``server``; with ``api_key``, ``/v1/*`` needs ``Bearer <api_key>``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for engine in server.engines.values():
            engine.start()
        yield
        # uvicorn has finished the requests in flight by now (graceful shutdown).
        await asyncio.to_thread(server.stop)

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.middleware("http")
    async def _authorize(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                err = ApiError(401, "missing or wrong API key", code="invalid_api_key")
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        load = [e.load for e in server.engines.values()]
        return {
            "status": "ok",
            "models": list(server.models),
            "running": sum(r for r, _ in load),
            "waiting": sum(w for _, w in load),
            "peak_batch": max(e.peak_rows for e in server.engines.values()),
            "dropped": sum(e.dropped for e in server.engines.values()),
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(m) for m in server.models.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_card(server.model(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_body(await request.body(), ChatRequest)
        served = server.model(req.model)
        prompt = _chat_prompt(served, req)
        return await _respond(server, served, req, prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_body(await request.body(), CompletionRequest)
        served = server.model(req.model)
        prompt = served.tokenizer(req.prompt)["input_ids"]
        return await _respond(server, served, req, prompt, chat=False)

    return app


def _model_card(m: ServedModel) -> dict[str, Any]:
    return {
        "id": m.name,
        "object": "model",
        "created": m.created,
        "owned_by": "tunesmith",
        "root": m.root,
        "parent": m.root if m.kind == "adapter" else None,
    }


def _chat_prompt(served: ServedModel, req: ChatRequest) -> list[int]:
    """Render with the model's own chat template, exactly as training and ``chat`` do."""
    from tunesmith.data.records import Conversation
    from tunesmith.data.render import render_prompt

    if not getattr(served.tokenizer, "chat_template", None):
        raise ApiError(400, f"{served.name} has no chat template; use /v1/completions")
    conversation = Conversation.from_messages(req.conversation())
    try:
        text = render_prompt(served.tokenizer, conversation)
    except Exception as exc:  # a template that rejects the conversation (e.g. role order)
        raise ApiError(400, f"the chat template rejected the messages: {exc}") from None
    return served.tokenizer(text, add_special_tokens=False)["input_ids"]


async def _respond(server: Server, served: ServedModel, req, prompt: list[int], *, chat: bool):
    sampling = server.sampling(req, served, len(prompt))
    job, events = server.submit(served, prompt, sampling)
    shape = _Shape(chat, served.name, len(prompt))
    if req.stream:
        stream = _sse(shape, job, events, req.include_usage)
        return StreamingResponse(stream, media_type="text/event-stream")
    pieces = []
    try:
        while True:
            ev = await events.get()
            pieces.append(ev.text)
            if ev.finish_reason:
                break
    finally:
        job.cancel()  # a no-op once finished; frees the row if this handler was cancelled
    if ev.finish_reason == "error":
        raise ApiError(500, f"generation failed: {ev.error}", type="server_error")
    return shape.full("".join(pieces), ev.finish_reason, ev.completion_tokens)


class _Shape:
    """OpenAI's response objects for one request: chat or text completion."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int):
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def _wrap(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        return {**head, "choices": choices, **extra}

    def full(self, text: str, reason: str, completion_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["text"] = text
        return self._wrap(self.object, [body], usage=self.usage(completion_tokens))

    def chunk(self, text: str | None, reason: str | None = None, *, role: bool = False):
        body: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            body["delta"] = delta
            return self._wrap("chat.completion.chunk", [body])
        body["text"] = text or ""
        return self._wrap(self.object, [body])

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else self.object
        return self._wrap(obj, [], usage=self.usage(completion_tokens))


def _sse_line(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(shape: _Shape, job: Job, events: asyncio.Queue, usage: bool) -> AsyncIterator[str]:
    """Server-sent events; a client that goes away cancels its row in the engine."""
    try:
        if shape.chat:
            yield _sse_line(shape.chunk("", role=True))
        while True:
            ev = await events.get()
            if ev.finish_reason == "error":
                yield _sse_line(ApiError(500, f"generation failed: {ev.error}").body())
                break
            if ev.text:
                yield _sse_line(shape.chunk(ev.text))
            if ev.finish_reason:
                yield _sse_line(shape.chunk(None, ev.finish_reason))
                if usage:
                    yield _sse_line(shape.usage_chunk(ev.completion_tokens))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()
