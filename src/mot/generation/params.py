"""Sampling settings and what every model kind gives the server, the chat and the evaluators: a
``TextGenerator`` that streams :class:`Piece` s."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

# Temperatures below this are greedy: dividing logits by e.g. 1e-300 overflows to inf and NaN probabilities.
GREEDY_BELOW = 1e-4


@dataclass
class GenerationParams:
    """Sampling settings.  ``temperature == 0`` (or anything below ``GREEDY_BELOW``) means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    stop: list[str] = field(default_factory=list)  # generation ends before the first stop string
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@runtime_checkable
class TextGenerator(Protocol):
    """A model that turns prompts into text.

    ``stream`` yields text pieces as they are produced (not after the whole reply is done); joining
    them gives the reply.  ``generate`` runs a batch of prompts and returns one reply each.
    """

    name: str

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[str]: ...

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]: ...


class Piece(str):
    """A streamed piece of text that also says how many generated tokens it covers (``tokens``).

    Being a ``str``, it works wherever the ``TextGenerator`` protocol expects text; a server reads
    ``tokens`` to report exact usage (EOS is not counted).
    """

    tokens: int

    def __new__(cls, text: str, tokens: int = 0) -> Piece:
        piece = super().__new__(cls, text)
        piece.tokens = tokens
        return piece
