"""The one sampler of every model kind: temperature, top-k and top-p (nucleus) filtering, or greedy.

The top-p boundary is Hugging Face's (``TopPLogitsWarper``): the nucleus is the smallest prefix of the
tokens sorted by probability whose mass reaches ``top_p``, so the token that crosses ``top_p`` is kept and
a token is dropped once the tokens ranked above it already reach ``top_p`` (an exact tie drops it).  The
most probable token is always kept.  Ties in probability are ordered as ``torch.sort`` orders them.
"""

from __future__ import annotations

import torch

from mot.generation.params import GenerationParams


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to ``-inf``) every token outside the top ``top_k`` and outside the top-``top_p`` nucleus.

    ``logits`` ``[..., V]`` (already divided by the temperature); ``top_k=0`` and ``top_p=1.0`` are off.
    Top-k first, then top-p over what top-k kept (the order of HF's warpers)."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the tokens ranked above it already reach top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def warp_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution ``[..., V]`` (fp32) after temperature, top-k and top-p."""
    return filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)


def sample_next(logits: torch.Tensor, params: GenerationParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of every row of ``logits [..., V]`` (shape ``[...]``): the argmax when
    ``params.greedy``, else a draw from :func:`warp_probs` (on ``generator``'s device when one is given)."""
    if params.greedy:
        return logits.argmax(-1)
    probs = warp_probs(logits, params.temperature, params.top_k, params.top_p)
    if generator is not None:
        probs = probs.to(generator.device)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def sample_token(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None = None) -> int:
    """One token from ``logits [V]``: :func:`sample_next` on the CPU (``generator`` a CPU generator or None)."""
    return int(sample_next(logits.cpu(), params, generator))
