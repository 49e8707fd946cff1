"""Routed evaluation models: a router over a pool of experts, each expert scored by one shared scorer.

``RoutedModel``
    Each question (the multiple-choice context, or the generation prompt) is routed once and the routed
    expert alone scores or answers it, through the same :class:`~mot.evaluation.hf_model.HFModel` that
    scores that expert on its own row, so a routed row is, item for item, the routed expert's result.
    ``route(texts) -> [expert index]`` is any function: a Mixture of Thoughts' router (its ``fast``
    mode, ``mot.thoughts.scoring``), a trained baseline router (RouterDC, cluster routing), a fixed expert.

``Memoized``
    An expert scorer that remembers its answers, so that rows sharing an expert never recompute (and
    never differ in the last bits because of a different batch).

``expert_scorer``
    The ``HFModel`` an expert is scored with, alone or routed to: a BOS first when its tokenizer adds
    one by itself (as the expert sees text inside a Mixture of Thoughts).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from mot.errors import MotError, UsageError
from mot.evaluation.hf_model import HFModel
from mot.evaluation.scoring import LogLikelihood
from mot.generation import GenerationParams


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer's own encoding (``add_special_tokens=True``) prepends its BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return with_special == [bos, *without]


def expert_scorer(model: Any, tokenizer: Any, name: str, *, batch_size: int = 8,
                  chat_template: bool = False) -> HFModel:
    """The ``HFModel`` an expert is scored with, alone or routed to (a BOS first when its tokenizer adds
    one, as the expert sees text inside a Mixture of Thoughts)."""
    return HFModel(model, tokenizer, name=name, batch_size=batch_size, add_bos=tokenizer_adds_bos(tokenizer),
                   use_chat_template=chat_template)


class RoutedModel:
    """Route each question to one expert of ``experts``; that expert's scorer answers it."""

    def __init__(self, name: str, route: Callable[[list[str]], list[int]], experts: Sequence[HFModel]):
        if not experts:
            raise UsageError("a routed model needs at least one expert")
        self.name = name
        self.route = route
        self.experts = list(experts)
        self.routed: dict[str, int] = {}  # text -> expert index, for reports

    def _route(self, texts: list[str]) -> list[int]:
        todo = [t for t in dict.fromkeys(texts) if t not in self.routed]
        if todo:
            picks = self.route(todo)
            if len(picks) != len(todo):
                raise MotError(f"{self.name}: the router returned {len(picks)} decisions for {len(todo)} texts")
            for text, pick in zip(todo, picks, strict=True):
                if not 0 <= int(pick) < len(self.experts):
                    raise MotError(f"{self.name}: routed to expert {pick}, but there are {len(self.experts)}")
                self.routed[text] = int(pick)
        return [self.routed[t] for t in texts]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        picks = self._route([c for c, _ in requests])
        results: list[LogLikelihood | None] = [None] * len(requests)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, pick in enumerate(picks):
            groups[pick].append(i)
        for pick, rows in groups.items():
            for i, r in zip(rows, self.experts[pick].loglikelihood([requests[i] for i in rows]), strict=True):
                results[i] = r
        return results  # type: ignore[return-value]

    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[str]:
        texts = [self.experts[0].prompt_text(p) if not isinstance(p, str) else p for p in prompts]
        picks = self._route(texts)
        replies: list[str] = [""] * len(prompts)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, pick in enumerate(picks):
            groups[pick].append(i)
        for pick, rows in groups.items():
            for i, r in zip(rows, self.experts[pick].generate([prompts[i] for i in rows], params), strict=True):
                replies[i] = r
        return replies



class Memoized:
    """An expert scorer that remembers its answers: a routed row (or MoT's fast mode) asking for an item
    its expert already scored gets the very same result, not a recomputation (a different batch could
    differ in the last bits).  Greedy decoding only for generation (sampling is not cached)."""

    def __init__(self, inner: HFModel):
        self.inner = inner
        self._ll: dict[tuple[str, str], LogLikelihood] = {}
        self._gen: dict[tuple[str, str], str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        todo = [r for r in dict.fromkeys(map(tuple, requests)) if r not in self._ll]
        if todo:
            self._ll.update(zip(todo, self.inner.loglikelihood(todo), strict=True))
        return [self._ll[tuple(r)] for r in requests]

    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[str]:
        if not params.greedy or not all(isinstance(p, str) for p in prompts):
            return self.inner.generate(prompts, params)
        key = repr(dataclasses.replace(params, seed=None))  # greedy: the seed changes nothing
        todo = [p for p in dict.fromkeys(prompts) if (p, key) not in self._gen]
        if todo:
            self._gen.update(((p, key), r) for p, r in zip(todo, self.inner.generate(todo, params), strict=True))
        return [self._gen[(p, key)] for p in prompts]
