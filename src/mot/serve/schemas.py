"""Request and response bodies of the OpenAI-compatible API (the subset mot serves).

Requests accept the fields the official clients send; fields mot cannot honour are rejected with a
400 that names them rather than silently ignored (``n`` other than 1, ``logprobs``, penalties,
images).  Unknown extra fields are ignored, as OpenAI-compatible servers commonly do.  Text that is not
valid Unicode -- a lone surrogate such as ``"\ud800"``, which JSON can spell but UTF-8 cannot encode -- is a
400 naming the field, wherever it is in the body.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mot.generation import GREEDY_BELOW, GenerationParams

# ----------------------------------------------------------------------------- requests


INVALID_UNICODE = "invalid_unicode"


def _invalid_text(value: Any, path: str) -> tuple[str, str] | None:
    """``(where, code point)`` of the first string (key or value) in ``value`` that is not valid Unicode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path or "body", f"U+{ord(value[exc.start]):04X}"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _invalid_text(key, f"a key of {path or 'the body'}")
            found = found or _invalid_text(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _invalid_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_message(self) -> dict:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=0, description="New tokens at most; default: the server's.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=100_000, description="mot extension: 0 turns it off.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only 1 is supported.")
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="Not supported: must be 0.")
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="Not supported: must be 0.")
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        found = _invalid_text(data, "")
        if found:
            raise PydanticCustomError(INVALID_UNICODE, "{where} holds a lone surrogate ({point}), which is not valid "
                                      "Unicode text: send the character it was meant to be, or drop it",
                                      {"where": found[0], "point": found[1],
                                       "param": None if found[0].startswith("a key of ") else found[0]})
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def params(self, max_new_tokens: int) -> GenerationParams:
        # A temperature this close to 0 overflows logits / temperature in every sampler; its
        # distribution is the argmax anyway, so it is served as greedy (temperature 0).
        temperature = 0.0 if self.temperature < GREEDY_BELOW else self.temperature
        return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=self.top_k,
                                top_p=self.top_p, stop=self.stops(), seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0, description="Alias of max_tokens.")
    logprobs: Literal[False] | None = Field(default=None, description="Not supported.")

    def new_token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] = Field(description="One prompt (a list must hold exactly one).")
    echo: bool = False
    logprobs: None = Field(default=None, description="Not supported.")
    suffix: None = Field(default=None, description="Not supported.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def new_token_limit(self) -> int | None:
        return self.max_tokens


# ----------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Routing(BaseModel):
    """mot extension on replies of routed models (MoT): which experts answered, and their weights."""

    model_config = ConfigDict(extra="allow")

    primary_expert: str
    active_experts: list[str]
    expert_weights: dict[str, float]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    routing: Routing | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    routing: Routing | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mot"
    kind: str = Field(description="mot extension: hf, mot, moellama, multitoken, ...")
    context_length: int | None = None
    routed: bool = Field(default=False, description="mot extension: replies carry routing info")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: int
    active: int
    queued: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, code=code, param=param)).model_dump()
