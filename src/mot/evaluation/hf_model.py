"""A plain Hugging Face causal LM as a baseline: both a ``TextGenerator`` (``mot.generation.hf``) and a
``LogLikelihoodScorer``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mot.evaluation.scoring import LogLikelihood
from mot.generation.hf import HFTextGenerator


class HFModel(HFTextGenerator):
    """Wrap ``(model, tokenizer)`` for evaluation, serving and chat.

    Log-likelihoods: trailing whitespace of the context moves to the continuation (``"Answer: "`` +
    ``"A"`` is scored as ``"Answer:"`` + ``" A"``), then the joined text is tokenised once and split
    where the context's own tokenisation ends, so the model sees the natural tokenisation of the full
    text even when a token spans the boundary.  An empty context becomes the BOS (or EOS) token.
    Inputs longer than the model's context keep their last ``max_length`` tokens.  Batches are
    left-padded with explicit position ids, so a batch gives the same numbers as one request at a time.

    ``add_bos`` prepends the BOS token to every context and prompt (for models trained with one).
    ``use_chat_template`` wraps string prompts as one user message; message lists always use the
    tokenizer's chat template (or a plain ``role: content`` layout when it has none).
    """

    def __init__(self, model, tokenizer, name: str | None = None, *, batch_size: int = 8,
                 max_length: int | None = None, add_bos: bool = False, use_chat_template: bool = False):
        super().__init__(model, tokenizer, name, batch_size=batch_size, max_length=max_length, add_bos=add_bos,
                         use_chat_template=use_chat_template)
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.share_context = True  # one forward per context for single-token continuations

    # ---------------------------------------------------------------- tokenisation

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``(context, continuation)`` as scored (see the class docstring)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        whole = self._encode(context + continuation)
        n_ctx = len(self._encode(context)) if context else 0
        ctx, cont = self._prefix() + whole[:n_ctx], whole[n_ctx:]
        if not ctx:
            if self.bos_id is None:
                raise ValueError(f"{self.name}: an empty context needs a BOS or EOS token to condition on")
            ctx = [self.bos_id]
        return ctx, cont

    # ---------------------------------------------------------------- log-likelihood

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        """``log P(continuation | context)`` per request.  Requests whose continuation is one token and
        whose context tokens are equal (the choices of one multiple-choice question) share one forward
        over the context: the numbers equal one forward per request (``share_context = False``)."""
        encoded = [self.encode_pair(c, x) for c, x in requests]
        return score_encoded(encoded, self._logprobs, self.max_length, self.batch_size, self.share_context)

    def _logprobs(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last ``keep`` positions of left-padded ``inputs``:
        ``[B, keep, V]`` in fp32 (models that support ``logits_to_keep`` never build the full logits)."""
        ids, mask = self._left_pad(inputs)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": keep} if self._supports_logits_to_keep else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
        return F.log_softmax(logits[:, -keep:].float(), dim=-1)


def score_encoded(encoded: Sequence[tuple[list[int], list[int]]],
                  logprobs_fn: Callable[[list[list[int]], int], torch.Tensor], max_length: int, batch_size: int,
                  share_context: bool = True) -> list[LogLikelihood]:
    """Log-likelihoods of encoded ``(context ids, continuation ids)`` pairs with ``logprobs_fn(inputs, keep)``
    (log-softmax ``[B, keep, V]`` at the last ``keep`` positions of left-padded ``inputs``).

    A sequence longer than ``max_length + 1`` keeps its last tokens.  With ``share_context``, pairs whose
    continuation is a single token and whose contexts are equal run as one input (the context, cut to
    its last ``max_length`` tokens: exactly the input the pair would have on its own) and each reads its
    token from the last position."""
    results: list[LogLikelihood | None] = [None] * len(encoded)
    jobs: list[tuple[list[int], list[tuple[int, list[int]]]]] = []  # (input ids, [(request, scored ids)])
    shared: dict[tuple[int, ...], int] = {}
    for i, (ctx, cont) in enumerate(encoded):
        if not cont:
            results[i] = LogLikelihood(0.0, 0, True)
            continue
        if share_context and len(cont) == 1:
            key = tuple(ctx[-max_length:])
            if key in shared:
                jobs[shared[key]][1].append((i, cont))
                continue
            shared[key] = len(jobs)
            jobs.append((list(key), [(i, cont)]))
            continue
        seq = (ctx + cont)[-(max_length + 1):]
        jobs.append((seq[:-1], [(i, seq[len(seq) - min(len(cont), len(seq) - 1):])]))
    order = sorted(range(len(jobs)), key=lambda j: -(len(jobs[j][0]) + max(len(c) for _, c in jobs[j][1])))
    for start in range(0, len(order), batch_size):
        batch = [jobs[j] for j in order[start:start + batch_size]]
        logprobs = logprobs_fn([inputs for inputs, _ in batch], max(len(c) for _, scored in batch for _, c in scored))
        width = logprobs.shape[1]
        for b, (_, scored) in enumerate(batch):
            for i, cont in scored:
                lp = logprobs[b, width - len(cont):]  # positions that predict the continuation tokens
                target = torch.tensor(cont, device=lp.device)
                picked = lp.gather(-1, target[:, None])[:, 0]
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = LogLikelihood(float(picked.sum()), len(cont), greedy)
    return results  # type: ignore[return-value]
