"""The OpenAI-compatible HTTP API and the web UI: ``create_app(registry, ...)``.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (``stream: true`` -> Server-Sent Events in the OpenAI chunk format ending in
``data: [DONE]``), and the chat UI at ``/``.  Errors use OpenAI's body, ``{"error": {"message", "type",
"param", "code"}}``: 400 bad parameters / prompt too long / ``max_tokens`` over the limit / text that is
not valid Unicode, 401 missing or wrong API key, 404 unknown model, 413 body too large (counted as the bytes
arrive, chunked bodies too), 429 queue full (streaming or not: always before the response starts).

With an API key, everything but ``/health``, the web UI (``/``, ``/static``) needs it, the API schema and its
viewers (``/openapi.json``, ``/docs``, ``/redoc``) included.  A client that disconnects cancels its
generation and frees its slot, streaming or not.

Routed models (MoT) add ``routing`` (primary and active experts, weights) to replies and to the first
stream chunk; clients that do not know the field ignore it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mot.generation import GenerationParams, Message
from mot.serve.registry import ModelEntry, ModelRegistry
from mot.serve.schemas import (
    INVALID_UNICODE,
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
from mot.serve.streaming import SSE_DONE, Admission, GenerationRun, Reservation, sse

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
        return _ErrorJSON(error_body(self.message, self.type, self.code, self.param), status_code=self.status,
                          headers=self.headers)


class _ErrorJSON(JSONResponse):
    """An error body that renders whatever text it holds: a lone surrogate echoed from a request is written
    as its JSON escape instead of failing the UTF-8 encoding (which would turn a 4xx into a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class _BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 as soon as the limit is passed.  A
    ``Content-Length`` over it is refused before any byte is read; otherwise (chunked bodies included) the
    bytes are counted as they arrive and reading stops at the first chunk past the limit.  A body within the
    limit is handed to the app unchanged."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> JSONResponse:
        return APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large").response()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._too_large()(scope, receive, send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body ended: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: dict | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429)}


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
    # The schema and its viewers are routes of their own below, behind the API key like the API.
    app = FastAPI(title="mot", version=_version(), docs_url=None, redoc_url=None, openapi_url=None,
                  description="OpenAI-compatible API over mot models (MoT, moellama, multi-token, HF).")
    app.state.registry = registry
    app.state.admission = admission

    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, param = [], None
        for err in exc.errors()[:5]:
            if err.get("type") == INVALID_UNICODE:  # names its own place in the body
                return APIError(400, err["msg"], param=err["ctx"]["param"], code="invalid_unicode").response()
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            param = param or where
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return APIError(400, "invalid request: " + "; ".join(problems), param=param,
                        code="invalid_parameter").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a request's fault: still OpenAI's error body (the traceback goes to the log).
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()

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

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(check_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(check_key)])
    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=_root(request) + "/openapi.json", title="mot - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=[Depends(check_key)])
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=_root(request) + "/openapi.json", title="mot - ReDoc")

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
        place = _reserve(admission)  # 429 here, before any response starts: streaming or not
        if body.stream:
            return _EventStream(_chat_events(prepared, body, place), place)
        text, completion_tokens = await _run_to_end(prepared, place, request)
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
        place = _reserve(admission)
        if body.stream:
            return _EventStream(_completion_events(prepared, body, place), place)
        text, completion_tokens = await _run_to_end(prepared, place, request)
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


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


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


async def _run_to_end(prepared: _Prepared, place: Reservation, request: Request) -> tuple[str, int]:
    """Generate the whole reply (non-streaming).  A client that disconnects -- while waiting for a slot or
    while its reply is generated -- cancels it: its place or slot is free again at once."""
    counter = _Counter(prepared.entry)
    runs: list[GenerationRun] = []

    async def generate() -> None:
        await place.acquire()
        run = GenerationRun(prepared.entry.generator, prepared.prompt, prepared.params, place.admission.release)
        runs.append(run.start())
        async for piece in run:
            counter.add(piece)

    task = asyncio.ensure_future(generate())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the client went away first
            if runs:
                runs[0].cancel()  # the worker stops; its last hand-off (after the release) ends the task
            else:
                task.cancel()  # still waiting in line: the place is given back
            await asyncio.wait({task})
        if task.cancelled():  # nobody is left to answer
            return "", 0
        task.result()  # the generator's error, if any
    except asyncio.CancelledError:  # this request itself is cancelled (the server is stopping)
        for run in runs:
            run.cancel()
        if not task.done():
            task.cancel()
        raise
    except Exception as exc:
        log.exception("generation failed")
        raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None
    finally:
        gone.cancel()
        place.abandon()  # only when the place was never used (nothing to give back otherwise)
    return "".join(counter.text), counter.total()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body is read by then: what comes next is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _reserve(admission: Admission) -> Reservation:
    place = admission.reserve()
    if place is None:
        raise APIError(429, f"server busy: {admission.active} generations running and {admission.queued} "
                            "waiting; retry shortly", "rate_limit_error", "queue_full", headers={"Retry-After": "1"})
    return place


class _EventStream(StreamingResponse):
    """A Server-Sent Events reply holding a place in the admission: the place is given back if the response
    ends (client gone, server stopping) before the stream took it."""

    def __init__(self, events: AsyncIterator[str], place: Reservation) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.place = place

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.place.abandon()


async def _pieces(prepared: _Prepared, place: Reservation, counter: _Counter) -> AsyncIterator[str]:
    """Pieces of one streamed generation.  Leaving early (client gone) cancels the generation."""
    await place.acquire()
    run = GenerationRun(prepared.entry.generator, prepared.prompt, prepared.params, place.admission.release).start()
    try:
        async for piece in run:
            counter.add(piece)
            yield piece
    finally:
        run.cancel()


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return sse(error_body(exc.message, exc.type, exc.code, exc.param))
    log.error("generation failed: %s: %s", type(exc).__name__, exc)
    return sse(error_body(f"generation failed: {type(exc).__name__}: {exc}", "server_error"))


def _chat_events(prepared: _Prepared, body: ChatCompletionRequest, place: Reservation) -> AsyncIterator[str]:
    return _event_stream(prepared, place, kind="chat.completion.chunk", id_prefix="chatcmpl", model=body.model,
                         include_usage=body.include_usage, opening={"delta": {"role": "assistant", "content": ""}},
                         content=lambda piece: {"delta": {"content": piece}}, closing={"delta": {}})


def _completion_events(prepared: _Prepared, body: CompletionRequest, place: Reservation) -> AsyncIterator[str]:
    return _event_stream(prepared, place, kind="text_completion", id_prefix="cmpl", model=body.model,
                         include_usage=body.include_usage, opening={"text": body.prompt_text() if body.echo else ""},
                         content=lambda piece: {"text": piece}, closing={"text": ""})


async def _event_stream(prepared: _Prepared, place: Reservation, *, kind: str, id_prefix: str, model: str,
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
    pieces = _pieces(prepared, place, counter)
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
