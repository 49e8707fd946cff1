"""A cheaper CPU path for linear layers fed a few rows: the verification pass of speculative decoding.

``nn.Linear`` computes ``x @ W.T``.  For a handful of rows on the CPU, PyTorch's BLAS call for that layout is
the slow one: on SmolLM2-135M (fp32, 2 threads) a cached pass over 2 to 8 new tokens costs 1.4-2.0x a
1-token pass, although it reads the same weights.  The same product written as ``(W @ x.T).T`` takes another
BLAS path: 0.59-0.88x a stock 1-token pass for 2 to 5 tokens, 0.97x for 1 token
(``bench/verify_pass_cost.py`` measures both side by side).  The results agree to rounding (the summation
order differs), which verification tolerates as it tolerates any change of batch shape.

:func:`install` swaps the ``forward`` of a model's plain float ``nn.Linear`` modules for one that takes the
skinny path while :func:`skinny_rows` is active in the calling thread and the input has at most
:data:`MAX_ROWS` rows; otherwise it is ``nn.Linear.forward`` exactly.  Installing changes nothing else, so a
``generate()`` outside the context runs as before.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_ROWS", "active", "install", "linear", "skinny_rows"]

MAX_ROWS = 64  # measured no slower up to here; wider inputs keep PyTorch's own path

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("mot_skinny_rows", default=False)


@contextmanager
def skinny_rows(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread only), installed linears fed at most ``MAX_ROWS`` rows use ``W @ x.T``."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    """Whether :func:`skinny_rows` is on in this thread (then few-row products need no padding)."""
    return _ACTIVE.get()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, on the skinny path while :func:`skinny_rows` is active and ``x`` has few rows (CPU)."""
    if not active() or x.device.type != "cpu" or x.numel() > MAX_ROWS * x.shape[-1]:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = (weight @ rows.t()).t().contiguous()  # contiguous: the next layer's product is faster too
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def install(model: nn.Module) -> int:
    """Give every plain floating-point ``nn.Linear`` of ``model`` the switchable forward; returns how many.

    Subclasses (quantized linears) are left alone.  Installing twice is harmless.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.is_floating_point():
            module.forward = _forward.__get__(module)
            count += 1
    return count
