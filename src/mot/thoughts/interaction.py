"""Stack-wise cross-expert interaction: the primary expert reads its peers' states.

After each stack, every active expert's hidden states are projected into a shared space
(pre-norm + linear, one projection per expert).  The primary's projected states are the queries;
the active peers' projected states, scaled by their routing weights, give keys and values (so the
language-model loss reaches the router).  The attended result goes back to the primary's hidden
size and is added through a per-channel gate that starts at zero: an untrained MoT is exactly its
primary expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InteractionLayer(nn.Module):
    """One stack's interaction over experts with hidden sizes ``hidden_sizes``."""

    def __init__(self, hidden_sizes: list[int], shared_dim: int, heads: int, dropout: float = 0.0,
                 scale: str = "keys_values", gate_init: float = 0.0, position: str = "none") -> None:
        super().__init__()
        if scale not in ("keys_values", "values", "none"):
            raise ValueError(f"interaction scale {scale!r}: use keys_values, values or none")
        self.scale = scale
        if shared_dim % heads:
            raise ValueError(f"shared_dim {shared_dim} is not divisible by interaction_heads {heads}")
        self.shared_dim = shared_dim
        self.heads = heads
        self.dropout = dropout
        self.norms = nn.ModuleList(nn.LayerNorm(h) for h in hidden_sizes)
        self.to_shared = nn.ModuleList(nn.Linear(h, shared_dim) for h in hidden_sizes)
        self.query = nn.Linear(shared_dim, shared_dim)
        self.key = nn.Linear(shared_dim, shared_dim)
        self.value = nn.Linear(shared_dim, shared_dim)
        self.out = nn.Linear(shared_dim, shared_dim)
        self.from_shared = nn.ModuleList(nn.Linear(shared_dim, h) for h in hidden_sizes)
        if position not in ("none", "recency"):
            raise ValueError(f"interaction position {position!r}: use none or recency")
        # softplus(0.5413) = 1: every head starts with bias -log(1 + d)
        self.recency = nn.Parameter(torch.full((heads,), 0.5413)) if position == "recency" else None
        self.gates = nn.ParameterList(nn.Parameter(torch.full((h,), float(gate_init))) for h in hidden_sizes)

    def project(self, expert: int, hidden: torch.Tensor) -> torch.Tensor:
        """Pre-norm + linear into the shared space: ``[..., H_e] -> [..., D]``."""
        return self.to_shared[expert](self.norms[expert](hidden.to(self.query.weight.dtype)))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, heads, T, D/heads]
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.shared_dim // self.heads).transpose(1, 2)

    def peer_keys_values(self, expert: int, hidden: torch.Tensor,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, heads, T, D/heads]`` of a peer's states ``[B, T, H_e]``, each row scaled by
        its routing weight ``[B]`` (keys and values, values only or neither: ``scale``)."""
        shared = self.project(expert, hidden)
        scale = weight.to(shared.dtype).view(-1, 1, 1)
        keys, values = self.key(shared), self.value(shared)
        if self.scale == "keys_values":
            keys = keys * scale
        if self.scale != "none":
            values = values * scale
        return self._split(keys), self._split(values)

    def adapt(self, primary: int, hidden: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The adapter capacity control (``MoTConfig.peers="adapter"``): the same parameters as one
        interaction, used as a token-wise MLP on the primary alone -- project into the shared space, three
        GELU layers (query, key, value), ``out``, back to the primary's size -- added through the same gate.
        ``weight [B]``: the primary's routing weight, scaling the update as a peer's weight scales what it
        exposes (so the LM loss reaches the router)."""
        x = self.project(primary, hidden)
        for layer in (self.query, self.key, self.value):
            x = F.gelu(layer(x))
        mixed = F.dropout(self.out(x), self.dropout, self.training)
        update = self.from_shared[primary](mixed)
        if weight is not None:
            update = update * weight.to(update.dtype).view(-1, 1, 1)
        return hidden + (self.gates[primary] * update).to(hidden.dtype)

    def forward(self, primary: int, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                allowed: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden [B, T, H_p]`` of the primary; ``keys``/``values`` ``[B, heads, L, d]`` of all active peers;
        ``allowed [B, T, L]`` bool; ``distance [B, T, L]``: how many visible peer tokens come after each one
        (``mot.thoughts.model.peer_distance``; read by ``position="recency"`` only).  Query rows with nothing
        allowed get no update (explicitly zeroed)."""
        if keys.shape[2] == 0:
            return hidden
        query = self._split(self.query(self.project(primary, hidden)))
        has_any = allowed.any(dim=-1)  # [B, T]
        # A row with nothing to attend to would be a softmax over nothing: let it attend everywhere
        # and discard its output below instead of producing NaN.
        mask = allowed | ~has_any.unsqueeze(-1)
        attn_mask = mask.unsqueeze(1)
        if self.recency is not None:
            if distance is None:
                raise ValueError("position='recency' needs the character distances of primary and peer tokens")
            slope = F.softplus(self.recency).view(1, -1, 1, 1)
            bias = -slope * torch.log1p(distance.to(query.dtype).clamp(min=0)).unsqueeze(1)
            attn_mask = bias.masked_fill(~attn_mask, float("-inf"))
        attended = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0)
        attended = attended * has_any[:, None, :, None].to(attended.dtype)
        b, _, t, _ = attended.shape
        mixed = self.out(attended.transpose(1, 2).reshape(b, t, self.shared_dim))
        mixed = F.dropout(mixed, self.dropout, self.training)
        update = self.from_shared[primary](mixed)
        return hidden + (self.gates[primary] * update).to(hidden.dtype)
