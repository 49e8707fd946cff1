"""The models a server offers: fixed at start, looked up by name, never loaded from a request.

A model is any ``mot.generation.TextGenerator``.  The server also uses these optional members when a
generator has them (all duck-typed, none required):

- ``context_length: int``                  -- prompt + new tokens at most; longer requests get a 400;
- ``count_tokens(prompt_or_messages) -> int`` -- prompt tokens after formatting (usage, length checks);
- ``tokenizer``                             -- used to count tokens when ``count_tokens`` is absent;
- ``routing_info(prompt_or_messages) -> dict`` -- routed models (MoT): ``{"primary_expert": str,
  "active_experts": [str], "expert_weights": {str: float}, ...}`` (extra keys are passed through),
  deterministic for a prompt; returned to clients in the ``routing`` extension field;
- stream pieces that are ``str`` subclasses with a ``tokens: int`` attribute (``mot.generation.Piece``)
  -- exact completion token counts; otherwise the completion is counted with the tokenizer.

Specs given as ``NAME=SPEC`` on the command line are opened by ``mot.loading.load_generators`` (the one
spec loader of the server, the chat and the evaluators):

- a multi-token checkpoint -> verified multi-token decoding;
- a Mixture-of-Thoughts checkpoint directory -> two virtual models, ``NAME:fast`` and ``NAME:full``;
- a moellama model, Trainer checkpoint (``step-*/``, ``best/``) or run directory -> moellama's own sampler;
- anything else -> ``mot.experts.resolve.resolve_expert`` (local dir, ``.gguf``, packaged GGUF, hub id)
  served through :class:`mot.serve.hf_generator.HFGenerator`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mot.errors import UsageError
from mot.generation import Message, TextGenerator
from mot.loading import MULTITOKEN_LOOKUP, MULTITOKEN_TREE

__all__ = ["MULTITOKEN_LOOKUP", "MULTITOKEN_TREE", "ModelEntry", "ModelRegistry", "parse_model_option"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass
class ModelEntry:
    """One servable name."""

    name: str
    generator: TextGenerator
    kind: str = "hf"
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context_length(self) -> int | None:
        value = getattr(self.generator, "context_length", None)
        return int(value) if value else None

    @property
    def routed(self) -> bool:
        return _routing_function(self.generator) is not None

    def count_prompt_tokens(self, prompt: str | Sequence[Message]) -> int | None:
        counter = getattr(self.generator, "count_tokens", None)
        if callable(counter):
            return int(counter(prompt))
        tokenizer = getattr(self.generator, "tokenizer", None)
        if tokenizer is not None and isinstance(prompt, str):
            return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return None

    def count_text_tokens(self, text: str) -> int | None:
        tokenizer = getattr(self.generator, "tokenizer", None)
        if tokenizer is None:
            return None
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def routing(self, prompt: str | Sequence[Message]) -> dict[str, Any] | None:
        fn = _routing_function(self.generator)
        return None if fn is None else dict(fn(prompt))


def _routing_function(generator: Any) -> Callable[[Any], dict] | None:
    fn = getattr(generator, "routing_info", None)
    return fn if callable(fn) else None


class ModelRegistry:
    """Name -> :class:`ModelEntry`, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def register(self, name: str, generator: TextGenerator, kind: str = "hf") -> ModelEntry:
        if not _NAME.match(name):
            raise UsageError(f"model name {name!r} is not allowed; use letters, digits and . _ - : / "
                             "(at most 128 characters, starting with a letter or digit)")
        if name in self._entries:
            raise UsageError(f"model name {name!r} is registered twice; give each --model a distinct NAME")
        if not callable(getattr(generator, "stream", None)):
            raise UsageError(f"model {name!r}: {type(generator).__name__} has no stream(prompt, params)")
        entry = ModelEntry(name, generator, kind)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    # ------------------------------------------------------------------ from the command line

    @classmethod
    def from_specs(cls, specs: Iterable[str], *, multitoken: dict[str, int] | None = None,
                   **load_kwargs: Any) -> ModelRegistry:
        """Build a registry from ``NAME=SPEC`` strings (a bare ``SPEC`` is named after its last path part).
        ``multitoken``: decoding options for multi-token checkpoints (``lookup``, ``tree``; see :meth:`load`)."""
        registry = cls()
        for item in specs:
            name, spec = parse_model_option(item)
            registry.load(name, spec, multitoken=multitoken, **load_kwargs)
        if not len(registry):
            raise UsageError("no models to serve; give at least one --model NAME=SPEC")
        return registry

    def load(self, name: str, spec: str, *, multitoken: dict[str, int] | None = None,
             **load_kwargs: Any) -> list[ModelEntry]:
        """Load ``spec`` and register it under ``name`` (MoT checkpoints: ``name:fast`` and ``name:full``;
        multi-token checkpoints: verified decoding, exactly the backbone's output, with ``multitoken``'s
        ``lookup`` (default :data:`MULTITOKEN_LOOKUP`) and ``tree`` (default :data:`MULTITOKEN_TREE`))."""
        from mot.loading import load_generators
        from mot.serve.hf_generator import HFGenerator

        loaded = load_generators(name, spec, multitoken=multitoken, hf=lambda m, t, n: HFGenerator(m, t, name=n),
                                 **load_kwargs)
        return [self.register(item.name, item.generator, kind=item.kind) for item in loaded]

    def register_mot(self, name: str, mot: Any) -> list[ModelEntry]:
        """Register a ``MixtureOfThoughts`` under one virtual name per generation mode (``NAME:fast``, ...)."""
        from mot.loading import MODES

        return [self.register(f"{name}:{mode}", mot.as_text_generator(mode, name=f"{name}:{mode}"), kind="mot")
                for mode in MODES]


def parse_model_option(item: str) -> tuple[str, str]:
    """``"NAME=SPEC"`` -> ``(NAME, SPEC)``; ``"SPEC"`` -> (last part of SPEC without suffix, SPEC)."""
    name, sep, spec = item.partition("=")
    if not sep:
        spec = item
        name = Path(item.rstrip("/")).name.removesuffix(".gguf") or item
    name, spec = name.strip(), spec.strip()
    if not name or not spec:
        raise UsageError(f"--model {item!r}: expected NAME=SPEC (e.g. --model tiny=./models/tiny)")
    return name, spec
