"""Transformer building blocks shared by the model kinds that define their own layers.

moellama's decoder and the multi-token draft layer both use them: RMSNorm (computed in fp32), rotary
embeddings in the half-split convention (computed on the fly from integer positions) and a dense SwiGLU
feed-forward with gate and up fused into one projection.  A low layer: it imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (bf16 squares lose too much), cast back before the gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel, the same maths (bit-identical on the CPU)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [B, T, head_dim] for integer ``positions`` [B, T] (half-split convention).

    Computed on the fly (a [B, T, head_dim/2] outer product): no buffer to keep in sync with a
    checkpoint, and any position offset from the KV cache is just a different ``positions``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, hd] by the angles in cos/sin [B, T, hd]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class SwiGLU(nn.Module):
    """A dense SwiGLU FFN: the shared expert."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * ffn_dim, bias=False)
        self.down = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
