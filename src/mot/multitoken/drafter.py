"""A feature-level draft layer (EAGLE-style): one decoder layer that reads the backbone's sequence.

The residual heads see only the backbone's state at the last position.  The draft layer reads, at every
position ``p``, the pair ``(f_p, x_{p+1})``: the backbone's final state there and the token that followed,
mixes them (``fc``), and runs one causal decoder layer (RoPE attention + SwiGLU) over the whole sequence.
Its output at ``p`` stands in for the backbone's state at ``p + 1``, so the backbone's LM head turns it into
a guess for token ``p + 2``.  Drafting further is autoregressive in feature space: step ``s`` reads its own
step ``s - 1`` output with that step's draft token, attending to every verified position and to the draft
steps before it.  "Head ``h``" is step ``h``: the same weights, unrolled.

Only verified positions ever enter the layer's key/value cache (a verification pass yields the backbone's
own states for the kept tokens), so a rejected draft never has to be rolled back here.

Training unrolls the steps over whole sequences at once (:meth:`DraftLayer.unrolled`): step ``s`` at
``p`` attends to step 1's keys at positions ``<= p`` plus its own earlier steps at ``p``, exactly the keys it
sees when decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mot.layers import RMSNorm, SwiGLU, apply_rope, rope_cos_sin

__all__ = ["DraftCache", "DraftLayer"]


class DraftCache:
    """Step-1 keys and values ``[1, heads, N, head_dim]`` of the verified positions, for one sequence."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)


class DraftLayer(nn.Module):
    """``u = fc([f; e])``, then ``u + attention(norm(u))`` and ``+ SwiGLU(norm(.))``, all widths the backbone's.

    No norm at the end: the output lives where ``f`` does (the states the LM head reads; ``fc`` starts as
    ``f`` plus noise), so at initialisation the layer already speaks the LM head's scale."""

    def __init__(self, hidden_size: int, embed_size: int, *, num_heads: int, ffn_size: int,
                 rope_theta: float = 10000.0, eps: float = 1e-6):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"draft layer: hidden size {hidden_size} does not split into {num_heads} even heads")
        self.num_heads, self.head_dim, self.rope_theta = num_heads, hidden_size // num_heads, rope_theta
        self.fc = nn.Linear(hidden_size + embed_size, hidden_size, bias=False)
        self.attn_norm = RMSNorm(hidden_size, eps)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = RMSNorm(hidden_size, eps)
        self.mlp = SwiGLU(hidden_size, ffn_size)
        for linear in (self.fc, self.qkv, self.out, self.mlp.gate_up, self.mlp.down):
            nn.init.normal_(linear.weight, std=0.02)
        with torch.no_grad():  # start near "the state passes through": fc reads f unchanged
            self.fc.weight[:, :hidden_size].add_(torch.eye(hidden_size))

    # ----------------------------------------------------------------------------------- pieces

    def _project(self, features: torch.Tensor, embeddings: torch.Tensor, positions: torch.Tensor):
        """``(u, q, k, v)``: the mixed input ``[B, T, D]`` and rotated ``[B, heads, T, head_dim]`` q, k, v."""
        u = self.fc(torch.cat([features, embeddings.to(features.dtype)], dim=-1))
        b, t, _ = u.shape
        q, k, v = self.qkv(self.attn_norm(u)).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cos_sin(positions.expand(b, t), self.head_dim, self.rope_theta, u.dtype)
        return u, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish(self, u: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """``attended [B, heads, T, head_dim]`` -> the layer's output ``[B, T, D]``."""
        b, _, t, _ = attended.shape
        x = u + self.out(attended.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.mlp_norm(x))

    # --------------------------------------------------------------------------------- training

    def unrolled(self, features: torch.Tensor, embeddings: torch.Tensor, steps: int,
                 attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Outputs ``[B, T, D]`` of steps ``1 .. steps`` at every position.

        ``features [B, T, D]``: the backbone's states; ``embeddings [B, T, steps, E]``: at ``p``, the
        embedding of the token step ``s`` reads (token ``p + s``).  ``attention_mask [B, T]``: padding.
        """
        b, t, _ = features.shape
        positions = torch.arange(t, device=features.device)[None]
        u, q, k1, v1 = self._project(features, embeddings[:, :, 0], positions)
        causal = torch.ones(t, t, dtype=torch.bool, device=features.device).tril()
        allowed = causal[None, None] if attention_mask is None else causal[None, None] & attention_mask[:, None, None, :].bool()
        scale = self.head_dim ** -0.5
        outputs = [self._finish(u, F.scaled_dot_product_attention(q, k1, v1, attn_mask=allowed))]
        own_keys: list[torch.Tensor] = []
        own_values: list[torch.Tensor] = []
        for step in range(1, steps):
            u, q, k, v = self._project(outputs[-1], embeddings[:, :, step], positions + step)
            own_keys.append(k)
            own_values.append(v)
            main = (q @ k1.transpose(-1, -2)) * scale
            main = main.masked_fill(~allowed, float("-inf"))
            extra = torch.stack([(q * key).sum(-1) * scale for key in own_keys], dim=-1)  # [B, H, T, s]
            probs = torch.cat([main, extra], dim=-1).softmax(-1)
            attended = probs[..., :t] @ v1 + (probs[..., t:, None] * torch.stack(own_values, dim=-2)).sum(-2)
            outputs.append(self._finish(u, attended))
        return outputs

    # -------------------------------------------------------------------------------- decoding

    def extend(self, cache: DraftCache, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Append verified positions (``features [m, D]``, ``embeddings [m, E]`` of the tokens after them) to
        ``cache``; returns step 1's output at the last of them ``[D]``."""
        start = len(cache)
        positions = torch.arange(start, start + features.shape[0], device=features.device)[None]
        u, q, k, v = self._project(features[None], embeddings[None], positions)
        cache.append(k, v)
        q, u = q[:, :, -1:], u[:, -1:]  # only the last row's output is used
        attended = F.scaled_dot_product_attention(q, cache.keys, cache.values)
        return self._finish(u, attended)[0, -1]

    def step(self, cache: DraftCache, previous: torch.Tensor, embedding: torch.Tensor,
             drafted: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One further draft step from the previous step's output and its draft token's embedding: ``[D]``
        (or ``[w, D]`` for ``w`` paths at once, one row each).  ``drafted`` holds this chain's earlier step
        keys and values (``[w, heads, 1, head_dim]`` each); this step's are appended to it."""
        single = previous.dim() == 1
        if single:
            previous, embedding = previous[None], embedding[None]
        paths = previous.shape[0]
        position = torch.full((paths, 1), len(cache) + len(drafted), device=previous.device)
        u, q, k, v = self._project(previous[:, None], embedding[:, None], position)
        drafted.append((k, v))
        keys = torch.cat([cache.keys.expand(paths, -1, -1, -1), *(key for key, _ in drafted)], dim=2)
        values = torch.cat([cache.values.expand(paths, -1, -1, -1), *(value for _, value in drafted)], dim=2)
        out = self._finish(u, F.scaled_dot_product_attention(q, keys, values))[:, -1]
        return out[0] if single else out
