"""The terminal chat session, one for every model kind (``mot chat`` and ``mot llama chat`` drive it).

At the ``you>`` prompt: a message; ``params`` (show the generation settings); ``params temperature=0.5
max_tokens=64`` (change them); ``reset`` (forget the conversation, keeping the system prompt); ``help``;
``exit`` / ``quit`` (or Ctrl+D).  Replies stream as they are generated.  Ctrl+C during a reply stops that
reply only: the process keeps its model and the conversation goes on.  With ``verbose`` every reply is
followed by its token count, time to first token and tokens/s (``on_stats`` decides how they are shown).

The conversation reaches the model in one of two ways:

- ``transcript=True`` (plain language models such as moellama): the session writes the conversation as
  a ``role: content`` transcript ending in ``assistant:`` (``mot.generation.hf.format_chat`` without a chat
  template) and stops each reply where the model starts the next ``user:`` line;
- ``transcript=False``: the messages go to the generator, which formats them itself (its tokenizer's chat
  template, or the same ``role: content`` lines when it has none).

Either way the oldest turns are dropped when the conversation no longer leaves room for a reply in the
model's context (``generator.context_length``, or ``generator.model.cfg.max_seq_len``; prompt tokens from
``generator.count_tokens`` or ``generator.tokenizer``).

This module imports nothing heavy: the CLIs load the model (``mot.loading``) and print; this is the loop.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from mot.generation import GenerationParams, Message

HELP = """commands:
  params                   show the generation settings
  params KEY=VALUE ...     change them: temperature, max_tokens, top_k, top_p, seed, stop (comma-separated)
  reset                    forget the conversation (keeps the system prompt)
  help                     this text
  exit | quit              leave (or Ctrl+D); Ctrl+C stops the current reply only"""

FIELDS = {"temperature": "temperature", "max_tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens",
          "top_k": "top_k", "top_p": "top_p", "seed": "seed", "stop": "stop"}
TURN_STOP = "\nuser:"


def parse_assignments(text: str, params: GenerationParams) -> GenerationParams:
    """``"temperature=0.5 top_k=20"`` applied to ``params`` (validated); ValueError names the problem."""
    changes: dict = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        field = FIELDS.get(key)
        if not sep or field is None:
            raise ValueError(f"expected KEY=VALUE with KEY one of {', '.join(sorted(FIELDS))}, got {item!r}")
        try:
            if field in ("max_new_tokens", "top_k"):
                changes[field] = int(value)
            elif field == "seed":
                changes[field] = None if value.lower() in ("", "none") else int(value)
            elif field == "stop":
                changes[field] = [s for s in value.split(",") if s]
            else:
                changes[field] = float(value)
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not a number") from None
    return dataclasses.replace(params, **changes)


def describe(params: GenerationParams) -> str:
    return (f"temperature={params.temperature} max_tokens={params.max_new_tokens} top_k={params.top_k} "
            f"top_p={params.top_p} seed={params.seed} stop={list(params.stop)}")


@dataclass(frozen=True)
class ReplyStats:
    """How one reply went: tokens, seconds in all, seconds to the first piece (None: no piece)."""

    tokens: int
    elapsed: float
    first_token: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.elapsed, 1e-9)

    def line(self) -> str:
        ttft = f"{self.first_token * 1000:.0f} ms" if self.first_token is not None else "-"
        return f"[{self.tokens} tokens in {self.elapsed:.2f}s, first token {ttft}, {self.tokens_per_s:.1f} tokens/s]"


def context_length(generator: Any) -> int | None:
    """Prompt + new tokens the generator's model takes at most, when it says."""
    value = getattr(generator, "context_length", None)
    if not value:
        value = getattr(getattr(getattr(generator, "model", None), "cfg", None), "max_seq_len", None)
    return int(value) if value else None


def count_prompt_tokens(generator: Any, prompt: str | list[Message]) -> int | None:
    """Tokens of ``prompt`` as the generator sees it (``count_tokens``, else its tokenizer for text)."""
    counter = getattr(generator, "count_tokens", None)
    if callable(counter):
        return int(counter(prompt))
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is not None and isinstance(prompt, str):
        return len(tokenizer.encode(prompt, add_special_tokens=False))
    return None


class ChatSession:
    """The read-eval-print loop over one ``TextGenerator`` (see the module docstring).

    ``generator``: a ``TextGenerator`` (or a server ``ModelEntry``: its generator is used); its ``stream``
    pieces may carry ``.tokens`` (exact counts).  ``system``: a system prompt kept across ``reset``.
    ``out``/``read``: where replies go and how a line is read.  ``label``: written before each reply.
    ``on_stats``: called with each reply's :class:`ReplyStats` when ``verbose`` (default: its ``line()``
    on ``out``)."""

    def __init__(self, generator: Any, params: GenerationParams, system: str | None = None, verbose: bool = False,
                 out: TextIO | None = None, read: Callable[[str], str] = input, *, transcript: bool = True,
                 label: str = "", on_stats: Callable[[ReplyStats], None] | None = None):
        if not callable(getattr(generator, "stream", None)) and hasattr(generator, "generator"):
            generator = generator.generator  # a serve.registry.ModelEntry
        self.generator, self.params, self.system, self.verbose = generator, params, system, verbose
        self.out = out or sys.stdout
        self.read = read
        self.transcript, self.label, self.on_stats = transcript, label, on_stats
        self.history: list[Message] = []

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def loop(self) -> None:
        while True:
            try:
                line = self.read("you> ")
            except EOFError:
                self.write("\n")
                return
            except KeyboardInterrupt:
                self.write("\n(Ctrl+C stops a reply; type 'exit' to leave)\n")
                continue
            text = line.strip()
            command, _, rest = text.partition(" ")
            if not text:
                continue
            if text in ("exit", "quit"):
                return
            if command == "params":
                try:
                    self.params = parse_assignments(rest, self.params)
                except ValueError as exc:
                    self.write(f"error: {exc}\n")
                    continue
                self.write(describe(self.params) + "\n")
            elif text == "reset":
                self.history.clear()
                self.write("(conversation cleared)\n")
            elif text == "help":
                self.write(HELP + "\n")
            else:
                self.reply(text)

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def _format(self) -> str | list[Message]:
        if not self.transcript:
            return self.messages()
        from mot.generation.hf import format_chat

        return format_chat(None, self.messages())  # no chat template: the plain role-tagged transcript

    def prompt(self) -> str | list[Message]:
        """What the model is given, without the oldest turns that no longer fit its context."""
        limit = context_length(self.generator)
        while True:
            prompt = self._format()
            if limit is None or len(self.history) <= 1:
                return prompt
            tokens = count_prompt_tokens(self.generator, prompt)
            if tokens is None or tokens + self.params.max_new_tokens <= limit:
                return prompt
            del self.history[:2 if len(self.history) > 2 else 1]  # the oldest user turn and its reply

    def reply(self, text: str) -> str:
        """Stream the model's reply to ``text`` to ``out``; returns it (as far as it got)."""
        self.history.append({"role": "user", "content": text})
        params = self.params
        if self.transcript:
            params = dataclasses.replace(params, stop=[*params.stop, TURN_STOP])
        stream = self.generator.stream(self.prompt(), params)
        pieces: list[str] = []
        counted, exact = 0, True
        started, first = time.perf_counter(), None
        stopped = False
        try:
            if self.label:
                self.write(self.label)
            for piece in stream:
                first = first or time.perf_counter()
                pieces.append(piece)
                tokens = getattr(piece, "tokens", None)
                if isinstance(tokens, int):
                    counted += tokens
                else:
                    exact = False
                self.write(str(piece))
        except KeyboardInterrupt:
            stopped = True
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()
        elapsed = time.perf_counter() - started
        reply = "".join(pieces)
        self.history.append({"role": "assistant", "content": reply.strip() if self.transcript else reply})
        self.write("\n[stopped]\n" if stopped else "\n")
        if self.verbose:
            tokenizer = getattr(self.generator, "tokenizer", None)
            if not exact:
                counted = len(tokenizer.encode(reply, add_special_tokens=False)) if tokenizer else len(pieces)
            stats = ReplyStats(counted, elapsed, None if first is None else first - started)
            if self.on_stats is not None:
                self.on_stats(stats)
            else:
                self.write(stats.line() + "\n")
        return reply
