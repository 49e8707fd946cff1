"""The OpenAI-compatible HTTP API and the web UI: ``create_app(registry, ...)``.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (``stream: true`` -> Server-Sent Events in the OpenAI chunk format ending in
``data: [DONE]``), and the chat UI at ``/``.  Errors use OpenAI's body, ``{"error": {"message", "type",
"param", "code"}}``: 400 bad parameters / prompt too long / ``max_tokens`` over the limit, 401 missing or
wrong API key, 404 unknown model, 413 body too large, 429 queue full.

Routed models (MoT) add ``routing`` (primary and active experts, weights) to replies and to the first
stream chunk; clients that do not know the field ignore it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mot.generation import GenerationParams, Message
from mot.serve.registry import ModelEntry, ModelRegistry
from mot.serve.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    ResponseMessage,
    Routing,
    Usage,
    error_body,
    new_id,
    now,
)
from mot.serve.streaming import SSE_DONE, Admission, GenerationRun, sse

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
MAX_BODY_BYTES = 4 * 1024 * 1024


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.code, self.param), status_code=self.status,
                            headers=self.headers)


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429)}


class _Prepared:
    """A validated request: the entry, the prompt, the params, token counts and routing."""

    def __init__(self, entry: ModelEntry, prompt: str | list[Message], params: GenerationParams,
                 prompt_tokens: int | None, routing: dict | None) -> None:
        self.entry, self.prompt, self.params = entry, prompt, params
        self.prompt_tokens, self.routing = prompt_tokens, routing


def create_app(registry: ModelRegistry, api_key: str | None = None, max_concurrency: int = 4,
               max_queue: int = 32, cors_origins: Sequence[str] = (), *,
               default_max_tokens: int = DEFAULT_MAX_TOKENS, max_tokens_limit: int = MAX_TOKENS_LIMIT,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the app.  ``api_key``: required as ``Authorization: Bearer KEY`` on ``/v1/*`` when set.
    ``max_concurrency`` generations run at once and ``max_queue`` more wait; beyond that: 429.
    ``cors_origins``: origins allowed to call the API from a browser (none by default)."""
    admission = Admission(max_concurrency, max_queue)
    app = FastAPI(title="mot", version=_version(),
                  description="OpenAI-compatible API over mot models (MoT, moellama, multi-token, HF).")
    app.state.registry = registry
    app.state.admission = admission

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return APIError(413, f"request body over {max_body_bytes} bytes", code="request_too_large").response()
        return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, param = [], None
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            param = param or where
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return APIError(400, "invalid request: " + "; ".join(problems), param=param,
                        code="invalid_parameter").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ endpoints

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> Health:
        return Health(models=len(registry), active=admission.active, queued=admission.queued)

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(check_key)], responses=_ERRORS,
             tags=["openai"])
    async def list_models() -> ModelList:
        return ModelList(data=[_card(e) for e in registry.entries()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, dependencies=[Depends(check_key)],
             responses=_ERRORS, tags=["openai"])
    async def get_model(model_id: str) -> ModelCard:
        return _card(_entry(registry, model_id))

    @app.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=True,
              dependencies=[Depends(check_key)],
              responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}}, tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [m.as_message() for m in body.messages]
        prepared = await _prepare(body, messages, body.new_token_limit())
        if body.stream:
            return _stream_response(_chat_events(prepared, body, admission))
        text, completion_tokens = await _run_to_end(prepared, admission, request)
        return ChatCompletion(
            id=new_id("chatcmpl"), created=now(), model=body.model,
            choices=[ChatChoice(message=ResponseMessage(content=text),
                                finish_reason=_finish(completion_tokens, prepared.params))],
            usage=_usage(prepared, completion_tokens), routing=_routing(prepared))

    @app.post("/v1/completions", response_model=Completion, response_model_exclude_none=True,
              dependencies=[Depends(check_key)],
              responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}}, tags=["openai"])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prompt = body.prompt_text()
        prepared = await _prepare(body, prompt, body.new_token_limit())
        if body.stream:
            return _stream_response(_completion_events(prepared, body, admission))
        text, completion_tokens = await _run_to_end(prepared, admission, request)
        return Completion(
            id=new_id("cmpl"), created=now(), model=body.model,
            choices=[CompletionChoice(text=(prompt + text) if body.echo else text,
                                      finish_reason=_finish(completion_tokens, prepared.params))],
            usage=_usage(prepared, completion_tokens), routing=_routing(prepared))

    async def _prepare(body, prompt: str | list[Message], requested: int | None) -> _Prepared:
        entry = _entry(registry, body.model)
        prompt_tokens = await run_in_threadpool(entry.count_prompt_tokens, prompt)
        context = entry.context_length
        if requested is not None and requested > max_tokens_limit:
            raise APIError(400, f"max_tokens={requested} is over this server's limit of {max_tokens_limit}",
                           param="max_tokens", code="max_tokens_too_large")
        room = None if context is None or prompt_tokens is None else context - prompt_tokens
        if room is not None and room < 1:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens; model {entry.name!r} has a context of "
                                f"{context} tokens and needs room for at least 1 new token: shorten the prompt",
                           param="messages" if isinstance(prompt, list) else "prompt", code="context_length_exceeded")
        if requested is None:
            max_new = default_max_tokens if room is None else min(default_max_tokens, room)
        elif room is not None and requested > room:
            raise APIError(400, f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) exceeds the context "
                                f"length of model {entry.name!r} ({context} tokens): lower max_tokens to <= {room}",
                           param="max_tokens", code="context_length_exceeded")
        else:
            max_new = requested
        try:
            params = body.params(max_new)
        except ValueError as exc:
            raise APIError(400, str(exc), code="invalid_parameter") from None
        routing = await run_in_threadpool(entry.routing, prompt) if entry.routed else None
        return _Prepared(entry, prompt, params, prompt_tokens, routing)

    # ------------------------------------------------------------------ the web UI

    static_dir = resources.files("mot.serve") / "static"
    if static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(str(static_dir / "index.html"), headers={"Cache-Control": "no-cache"})

    return app


# ---------------------------------------------------------------------- helpers


def _version() -> str:
    try:
        from mot import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


def _entry(registry: ModelRegistry, name: str) -> ModelEntry:
    entry = registry.get(name)
    if entry is None:
        known = ", ".join(registry.names()) or "(none)"
        raise APIError(404, f"model {name!r} is not served here; available: {known}", code="model_not_found",
                       param="model")
    return entry


def _card(entry: ModelEntry) -> ModelCard:
    return ModelCard(id=entry.name, created=entry.created, kind=entry.kind, context_length=entry.context_length,
                     routed=entry.routed)


def _finish(completion_tokens: int, params: GenerationParams) -> str:
    return "length" if completion_tokens >= params.max_new_tokens else "stop"


def _usage(prepared: _Prepared, completion_tokens: int) -> Usage:
    prompt_tokens = prepared.prompt_tokens or 0
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _routing(prepared: _Prepared) -> Routing | None:
    return None if prepared.routing is None else Routing(**prepared.routing)


class _Counter:
    """Completion tokens: exact from pieces that carry ``tokens``, else counted with the tokenizer."""

    def __init__(self, entry: ModelEntry) -> None:
        self.entry, self.exact, self.pieces, self.text = entry, 0, 0, []
        self.all_exact = True

    def add(self, piece: str) -> None:
        self.text.append(piece)
        self.pieces += 1
        tokens = getattr(piece, "tokens", None)
        if isinstance(tokens, int):
            self.exact += tokens
        else:
            self.all_exact = False

    def total(self) -> int:
        if self.all_exact:
            return self.exact
        counted = self.entry.count_text_tokens("".join(self.text))
        return self.pieces if counted is None else counted


async def _run_to_end(prepared: _Prepared, admission: Admission, request: Request) -> tuple[str, int]:
    """Generate the whole reply (non-streaming); a client that disconnects cancels it."""
    import asyncio

    if not admission.try_reserve():
        raise _queue_full(admission)
    await admission.acquire()
    run = GenerationRun(prepared.entry.generator, prepared.prompt, prepared.params, admission.release).start()
    counter = _Counter(prepared.entry)

    async def collect() -> None:
        async for piece in run:
            counter.add(piece)

    task = asyncio.ensure_future(collect())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                run.cancel()
        await task
    except asyncio.CancelledError:
        run.cancel()
        raise
    except Exception as exc:
        run.cancel()
        log.exception("generation failed")
        raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
    finally:
        if not task.done():
            task.cancel()
    return "".join(counter.text), counter.total()


def _queue_full(admission: Admission) -> APIError:
    return APIError(429, f"server busy: {admission.active} generations running and {admission.queued} waiting; "
                         "retry shortly", "rate_limit_error", "queue_full", headers={"Retry-After": "1"})


def _stream_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _pieces(prepared: _Prepared, admission: Admission, counter: _Counter) -> AsyncIterator[str]:
    """Pieces of one streamed generation.  Leaving early (client gone) cancels the generation."""
    if not admission.try_reserve():  # filled up since the handler checked
        raise _queue_full(admission)
    await admission.acquire()
    run = GenerationRun(prepared.entry.generator, prepared.prompt, prepared.params, admission.release).start()
    try:
        async for piece in run:
            counter.add(piece)
            yield piece
    finally:
        run.cancel()


def _check_room(admission: Admission) -> None:
    if not admission.has_room():
        raise _queue_full(admission)


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return sse(error_body(exc.message, exc.type, exc.code, exc.param))
    log.error("generation failed: %s: %s", type(exc).__name__, exc)
    return sse(error_body(f"generation failed: {type(exc).__name__}: {exc}", "server_error"))


def _chat_events(prepared: _Prepared, body: ChatCompletionRequest, admission: Admission) -> AsyncIterator[str]:
    _check_room(admission)  # 429 before the response starts
    return _event_stream(prepared, admission, kind="chat.completion.chunk", id_prefix="chatcmpl", model=body.model,
                         include_usage=body.include_usage, opening={"delta": {"role": "assistant", "content": ""}},
                         content=lambda piece: {"delta": {"content": piece}}, closing={"delta": {}})


def _completion_events(prepared: _Prepared, body: CompletionRequest, admission: Admission) -> AsyncIterator[str]:
    _check_room(admission)
    return _event_stream(prepared, admission, kind="text_completion", id_prefix="cmpl", model=body.model,
                         include_usage=body.include_usage, opening={"text": body.prompt_text() if body.echo else ""},
                         content=lambda piece: {"text": piece}, closing={"text": ""})


async def _event_stream(prepared: _Prepared, admission: Admission, *, kind: str, id_prefix: str, model: str,
                        include_usage: bool, opening: dict, content: Callable[[str], dict],
                        closing: dict) -> AsyncIterator[str]:
    """The SSE stream of a chat or text completion: an opening chunk (with the routing when there is one),
    one chunk per generated piece, a closing chunk with the finish reason, the usage when asked, ``[DONE]``.
    ``opening``, ``content(piece)`` and ``closing`` are the choice's payload (``delta`` or ``text``).  A failure
    after the status line went out is reported as an error event."""
    cid, created = new_id(id_prefix), now()

    def chunk(payload: dict | None, finish: str | None = None, **extra: Any) -> dict:
        choices = [] if payload is None else [{"index": 0, **payload, "logprobs": None, "finish_reason": finish}]
        return {"id": cid, "object": kind, "created": created, "model": model, "choices": choices, **extra}

    first: dict[str, Any] = {}
    if prepared.routing is not None:
        first["routing"] = _routing(prepared).model_dump()
    counter = _Counter(prepared.entry)
    pieces = _pieces(prepared, admission, counter)
    try:
        yield sse(chunk(opening, **first))
        async for piece in pieces:
            if piece:
                yield sse(chunk(content(str(piece))))
    except Exception as exc:  # noqa: BLE001 - reported in the stream: the status line is already sent
        yield _error_event(exc)
        yield SSE_DONE
        return
    finally:
        await pieces.aclose()
    completion_tokens = counter.total()
    yield sse(chunk(closing, _finish(completion_tokens, prepared.params)))
    if include_usage:
        yield sse(chunk(None, usage=_usage(prepared, completion_tokens).model_dump()))
    yield SSE_DONE
