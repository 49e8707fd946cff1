"""``MultiTokenConfig``: the shape of the heads and router, and the weights of the stage-2 losses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mot.errors import UsageError

HEAD_TYPES = ("residual", "layer")


@dataclass
class MultiTokenConfig:
    """Heads and router over a frozen backbone.

    Head ``h`` predicts the token at offset ``h`` after the next position (``t + 1 + h``).  Head 0 is the
    backbone's own LM head (nothing to train); heads ``1..num_heads-1`` are residual blocks in front of the
    LM head.  At most ``k_max`` heads (head 0 included) are active per decoding step, so one backbone pass
    yields at most ``k_max`` tokens.
    """

    num_heads: int = 4
    k_max: int = 3
    head_layers: int = 1  # residual blocks per head
    untie_heads: bool = False  # True: each head trains its own copy of the LM head (Medusa-1); False: shared, frozen
    token_conditioning: bool = True  # heads also read the embedding of the next token (t + 1), known when drafting
    # Hydra-style: head h reads all h tokens t+1..t+h (the backbone's next token, then heads 1..h-1's drafts);
    # needs token_conditioning (off without it)
    chain_conditioning: bool = True
    draft_vocab_size: int | None = None  # heads score only this many frequent token ids (None: whole vocabulary)
    # "residual": each head h is its own residual block on the last state (Medusa/Hydra); "layer": heads
    # 1..H-1 are the unrolled steps of one shared draft layer that attends over the whole sequence of backbone
    # states (EAGLE-style, mot.multitoken.drafter); needs token_conditioning
    head_type: str = "residual"
    layer_heads: int | None = None  # draft layer: attention heads (default: the backbone's, else hidden / 64)
    layer_ffn: int | None = None  # draft layer: SwiGLU width (default: the backbone's intermediate size)
    router_hidden: int | None = None  # default: the backbone's hidden size
    router_layers: int = 3
    router_dropout: float = 0.0
    draft_threshold: float = 0.0  # decoding drafts a head only while sigmoid(router score) >= this
    # head losses: cross-entropy on the target tokens, and (EAGLE-style, no vocabulary projection, so cheap)
    # smooth-L1 from head h's state to the backbone's own state at t + h, which its LM head turns into the
    # backbone's guess for token t + 1 + h
    ce_weight: float = 1.0
    feature_weight: float = 0.0
    train_positions: int | None = None  # cross-entropy/router on at most this many random steps per batch
    # stage-2 router losses: BCE against "would this head's draft be accepted", load balancing, entropy, budget
    bce_weight: float = 1.0
    balance_weight: float = 0.2
    entropy_weight: float = 0.01
    budget_weight: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise UsageError(f"multitoken: num_heads (--heads) must be an integer >= 1, got {self.num_heads!r}")
        if not isinstance(self.k_max, int) or not 1 <= self.k_max <= self.num_heads:
            raise UsageError(f"multitoken: k_max (--k-max) must be between 1 and num_heads ({self.num_heads}), got {self.k_max!r}")
        if self.head_layers < 1 or self.router_layers < 1:
            raise UsageError("multitoken: head_layers and router_layers must be >= 1")
        if not 0.0 <= self.draft_threshold <= 1.0:
            raise UsageError(f"multitoken: draft_threshold must be in [0, 1], got {self.draft_threshold}")
        if not self.token_conditioning:  # chain conditioning reads token embeddings: off without them
            self.chain_conditioning = False
        if self.head_type not in HEAD_TYPES:
            raise UsageError(f"multitoken: head_type must be one of {', '.join(HEAD_TYPES)}, got {self.head_type!r}")
        if self.head_type == "layer" and not self.token_conditioning:
            raise UsageError("multitoken: head_type 'layer' reads the drafted tokens: it needs token_conditioning")
        if self.head_type == "layer" and self.untie_heads:
            raise UsageError("multitoken: head_type 'layer' drafts through the shared LM head: drop --untie-heads")
        for name in ("layer_heads", "layer_ffn"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"multitoken: {name} must be >= 1 (or None), got {getattr(self, name)}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 2:
            raise UsageError(f"multitoken: draft_vocab_size must be >= 2 (or None), got {self.draft_vocab_size}")
        if self.train_positions is not None and self.train_positions < 1:
            raise UsageError(f"multitoken: train_positions must be >= 1, got {self.train_positions}")
        for name in ("ce_weight", "feature_weight", "bce_weight", "balance_weight", "entropy_weight",
                     "budget_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"multitoken: {name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiTokenConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"multitoken config: unknown keys {unknown}; known keys are {sorted(known)}")
        if "token_conditioning" not in data:  # checkpoints from before the option: plain Medusa heads
            data = {**data, "token_conditioning": False}
        if "chain_conditioning" not in data:  # checkpoints from before the option: heads read t + 1 only
            data = {**data, "chain_conditioning": False}
        return cls(**data)
