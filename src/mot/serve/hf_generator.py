"""A plain Hugging Face causal LM as a streaming, cancellable ``TextGenerator`` for the server and the chat.

Prompt formatting, batch ``generate`` and token streaming are ``mot.generation.hf.HFTextGenerator``'s
(chat template of the tokenizer when it has one, else ``role: content`` lines ending in ``assistant:``;
HF ``generate()`` in a worker thread, one :class:`Piece` per token, with how many tokens it covers so the
server reports exact usage).  What this adds for serving: prompts are never truncated (the server rejects
a prompt that does not fit instead of silently dropping its start), ``context_length``/``count_tokens``,
and ``stats`` on streams and cancellations.  Closing the iterator (a client that went away) stops
generation after at most one more token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from mot.generation import GenerationParams, Message, Piece
from mot.generation.hf import HFTextGenerator


class HFGenerator:
    """``TextGenerator`` over ``(model, tokenizer)`` with true token streaming and cancellation.

    Optional server extensions it provides: ``context_length`` and ``count_tokens(prompt)``.
    ``stats`` counts streams and those cancelled by their consumer (read by tests and ``/health``).
    """

    def __init__(self, model, tokenizer, name: str = "model", *, context_length: int | None = None) -> None:
        self.base = HFTextGenerator(model, tokenizer, name, max_length=context_length)
        self.model = self.base.model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length: int = int(self.base.max_length)
        self.stats = {"streams": 0, "cancelled": 0}
        self._stats_lock = threading.Lock()

    # ---------------------------------------------------------------- the prompt

    def prompt_text(self, prompt: str | Sequence[Message]) -> str:
        return self.base.prompt_text(prompt)

    def prompt_ids(self, prompt: str | Sequence[Message]) -> list[int]:
        """Every token of the formatted prompt (never truncated)."""
        return self.base.prompt_ids(prompt)

    def count_tokens(self, prompt: str | Sequence[Message]) -> int:
        return len(self.prompt_ids(prompt))

    # ---------------------------------------------------------------- generation

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        return self.base.generate(prompts, params)

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[Piece]:
        """Yield one :class:`Piece` per produced token (see the module docstring)."""
        if params.max_new_tokens == 0:
            return
        pieces = self.base.stream_ids(self.prompt_ids(prompt), params)
        closed = False
        try:
            yield from pieces
        except GeneratorExit:  # the consumer closed the stream (a client went away)
            closed = True
            raise
        finally:
            pieces.close()  # a stop string, a closed stream or an error: stop generate() now
            with self._stats_lock:
                self.stats["streams"] += 1
                self.stats["cancelled"] += int(closed)
