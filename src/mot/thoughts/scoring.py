"""Mixture of Thoughts as an evaluation model: log-likelihood and generation in ``fast`` and ``full`` mode.

``MoTModel``
    A ``MixtureOfThoughts`` in ``fast`` (routing only: a ``RoutedModel`` over MoT's router, top-1: learned
    routing alone) or ``full`` mode (with interaction).  Full-mode multiple choice runs MoT's own forward:
    the router reads the context, the primary expert walks ``context + continuation`` stack by stack
    reading its peers through the interaction layers, and the primary's tokenizer and vocabulary score
    the continuation.  The primary's tokens are exactly those its ``HFModel`` scores (the joined text
    tokenised once, split where the context's tokens end; the context's trailing whitespace moved to the
    continuation; a BOS first when the model adds one), so a MoT whose gates are all zero scores every
    item exactly like its primary expert (the adapter walk equals the HF forward to 1e-5).  Single-token
    continuations of one context (letters) share one forward over the context, as in ``HFModel``.
    Full-mode generation is ``MixtureOfThoughts.generate(..., mode="full")``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mot.errors import MotError, UsageError
from mot.evaluation.hf_model import HFModel, score_encoded
from mot.evaluation.routed import RoutedModel
from mot.evaluation.scoring import LogLikelihood
from mot.generation import GenerationParams
from mot.thoughts.alignment import TokenSpans, known_ends


def mot_router(mot: Any) -> Callable[[list[str]], list[int]]:
    """MoT's own routing (eval mode: no noise, no dropout) as ``texts -> primary expert``."""

    def route(texts: list[str]) -> list[int]:
        was_training = mot.training
        mot.eval()
        try:
            with torch.no_grad():
                return [int(p) for p in mot.route(texts).primary.tolist()]
        finally:
            mot.train(was_training)

    return route


class MoTModel:
    """A ``MixtureOfThoughts`` for evaluation in ``mode`` ``fast`` or ``full`` (see the module docstring).

    ``experts[i]`` is expert ``i``'s scorer (``expert_scorer``); the same objects should score the
    experts' own rows, so that routed items are scored identically."""

    def __init__(self, mot: Any, experts: Sequence[HFModel], mode: str = "full", name: str = "mot",
                 batch_size: int = 8):
        if mode not in ("fast", "full"):
            raise UsageError(f"MoT evaluation mode must be 'fast' or 'full', got {mode!r}")
        if len(experts) != mot.num_experts:
            raise UsageError(f"{len(experts)} expert scorers for a MoT with {mot.num_experts} experts")
        self.mot, self.experts, self.mode, self.name, self.batch_size = mot, list(experts), mode, name, batch_size
        self.routed = RoutedModel(name, mot_router(mot), experts)
        self.share_context = True

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[str]:
        if self.mode == "fast":
            return self.routed.generate(prompts, params)
        texts = [p if isinstance(p, str) else self.mot.as_text_generator().prompt_text(p) for p in prompts]
        return self.mot.generate(texts, params, mode="full")

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        if self.mode == "fast":
            return self.routed.loglikelihood(requests)
        mot = self.mot
        was_training = mot.training
        mot.eval()
        try:
            with torch.no_grad():
                return self._full_loglikelihood(list(requests))
        finally:
            mot.train(was_training)

    def _full_loglikelihood(self, requests: list[tuple[str, str]]) -> list[LogLikelihood]:
        mot = self.mot
        contexts = list(dict.fromkeys(c for c, _ in requests))
        decision = mot.route(contexts) if contexts else None
        row_of = {c: r for r, c in enumerate(contexts)}
        results: list[LogLikelihood] = [LogLikelihood(0.0, 0, True)] * len(requests)
        by_primary: dict[int, list[int]] = defaultdict(list)
        for i, (context, _) in enumerate(requests):
            by_primary[int(decision.primary[row_of[context]])].append(i)
        for primary, rows in by_primary.items():
            scorer = self.experts[primary]
            encoded = [scorer.encode_pair(*requests[i]) for i in rows]
            # the texts behind each input: prompt = context (trailing space moved), completion = the rest
            inputs_text: dict[tuple[int, ...], tuple[str, str, int]] = {}
            for (ctx, cont), i in zip(encoded, rows, strict=True):
                context, continuation = _split_space(*requests[i])
                r = row_of[requests[i][0]]
                if self.share_context and len(cont) == 1:
                    inputs_text.setdefault(tuple(ctx), (context, "", r))
                else:
                    inputs_text.setdefault(tuple(ctx + cont[:-1]), (context, continuation, r))

            def logprobs(inputs: list[list[int]], keep: int, _p: int = primary,
                         _texts: dict = inputs_text) -> torch.Tensor:
                return self._primary_logprobs(_p, [(ids, *_texts[tuple(ids)]) for ids in inputs], keep, decision)

            scored = score_encoded(encoded, logprobs, max_length=1 << 30, batch_size=self.batch_size,
                                   share_context=self.share_context)
            for i, r in zip(rows, scored, strict=True):
                results[i] = r
        return results

    def _primary_logprobs(self, primary: int, rows: list[tuple[list[int], str, str, int]], keep: int,
                          decision: Any) -> torch.Tensor:
        """Log-softmax ``[B, keep, V]`` at the last ``keep`` positions of each row's primary input, from
        MoT's forward with interaction (rows left-aligned to the right like ``HFModel``)."""
        mot = self.mot
        scorer = self.experts[primary]
        tokens = [_token_spans(scorer, ids, context, completion) for ids, context, completion, _ in rows]
        peer_rows: dict[int, list[int]] = defaultdict(list)
        for b, (_, _, _, r) in enumerate(rows):
            for expert in dict.fromkeys(mot.peer_experts(decision.indices[r].tolist())):
                peer_rows[int(expert)].append(b)
        states: dict[tuple[int, int], Any] = {}
        for expert, members in peer_rows.items():
            computed = mot.compute_peer_states(expert, [_peer_text(rows[b])[0] for b in members],
                                               [_peer_text(rows[b])[1] for b in members])
            for b, st in zip(members, computed, strict=True):
                states[(b, expert)] = st
        views = []
        for b, ((_, context, completion, r), tok) in enumerate(zip(rows, tokens, strict=True)):
            active = mot.slot_experts(decision.indices[r].tolist())
            peers = [(int(e), decision.weights[r, k], states[(b, int(e))]) for k, e in enumerate(active) if k > 0]
            views.append(mot.peer_views(context, completion, known_ends(tok), peers))
        logits = mot._primary_pass(primary, [t.input_ids for t in tokens], views,
                                   primary_weights=[decision.weights[r, 0] for _, _, _, r in rows], keep=keep)
        out = torch.stack([F.pad(lg[-keep:].float(), (0, 0, keep - min(keep, lg.shape[0]), 0)) for lg in logits])
        return F.log_softmax(out, dim=-1)


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    """``HFModel.encode_pair``'s convention: the context's trailing whitespace starts the continuation."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        return context[:-n_space], context[-n_space:] + continuation
    return context, continuation


def _peer_text(row: tuple[list[int], str, str, int]) -> tuple[str, str]:
    """The text a peer reads for an input row: the context and the part of the completion the input
    covers (an input ends one token before the continuation's end; the primary never sees the rest, and
    the visibility rule hides any peer token that ends after the primary's known text)."""
    _, context, completion, _ = row
    return context, completion


def _token_spans(scorer: HFModel, ids: list[int], context: str, completion: str):
    """``TokenSpans`` (character offsets in ``context + completion``) of the primary input ``ids``, which
    are a prefix of ``scorer``'s tokens of the joined text (BOS first when it adds one)."""
    text = context + completion
    tokenizer = scorer.tokenizer
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else {"input_ids": [],
                                                                                                "offset_mapping": []}
    whole = list(enc["input_ids"])
    spans = [(s, e) if e > s else (s, s) for s, e in enc["offset_mapping"]]
    n_prefix = len(scorer._prefix()) or (1 if not context else 0)  # HFModel.encode_pair's BOS
    if ids[n_prefix:] != whole[:len(ids) - n_prefix]:
        raise MotError(f"{scorer.name}: the scored tokens are not the tokens of the text {text[:40]!r}...; "
                       "cannot align them with character offsets")
    spans = [(0, 0)] * n_prefix + spans[:len(ids) - n_prefix]
    span_t = torch.tensor(spans, dtype=torch.long).view(-1, 2)
    num_prompt = sum(1 for s, e in spans if e <= len(context))
    return TokenSpans(torch.tensor(ids, dtype=torch.long), span_t[:, 0].contiguous(), span_t[:, 1].contiguous(),
                      num_prompt, len(context))
