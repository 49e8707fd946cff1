"""The contract between a frozen HF causal LM and the code that walks its layers by hand.

``mot.experts.generic.GenericAdapter`` implements it for every supported family (one small subclass
per family in ``mot.experts.families`` / ``mot.experts.generic``, hooks only where a family differs).  The walk is split into chunks: ``embed`` starts a chunk of new tokens
(prefill or one decode step), ``run_layers`` advances it through a contiguous range of layers
(a "stack"), ``logits`` finishes it.  Between stacks the caller may change the hidden states
(the MoT interaction).  The KV cache and the attention mask over every token seen so far live in
an ``ExpertState``; one state per expert per batch.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class Encoded:
    """Token ids of a batch of texts, left-padded, with each token's character span."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 real token, 0 padding (padding on the left)
    char_start: torch.Tensor  # [B, T] long, start of the token's span in its text (0 for pads/specials)
    char_end: torch.Tensor  # [B, T] long, end (exclusive) of the span; 0 for pads and leading specials


@dataclass
class ExpertState:
    """Decoding state of one expert over one batch."""

    cache: Any  # a transformers Cache (DynamicCache), owned by this expert only
    attention_mask: torch.Tensor | None = None  # [B, T_seen] long over every token fed so far
    chunk: dict = field(default_factory=dict)  # per-chunk inputs shared by all layers (mask, rotary, ...)

    @property
    def seen_tokens(self) -> int:
        return 0 if self.attention_mask is None else self.attention_mask.shape[1]


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no adapter."""


class ExpertAdapter(ABC):
    """Walks one frozen HF causal LM layer by layer with a KV cache.

    Positions are computed from the attention mask (``cumsum - 1``), so left padding gives every
    row the positions it would have alone -- the same convention as HF ``generate()``.
    """

    family: ClassVar[str]  # HF ``config.model_type`` handled by this adapter

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config

    # -- sizes ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- the walk ------------------------------------------------------------------------------
    @abstractmethod
    def new_state(self) -> ExpertState:
        """An empty state (fresh cache, nothing seen)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              state: ExpertState) -> torch.Tensor:
        """Start a chunk of new tokens ``[B, T]``: append ``attention_mask`` (all ones if None) to
        ``state.attention_mask``, compute positions and the per-chunk inputs every layer needs
        (causal/padding mask, rotary embeddings) into ``state.chunk``, return embeddings ``[B, T, H]``
        (including absolute position embeddings and embedding scaling where the family has them)."""

    @abstractmethod
    def run_layers(self, hidden: torch.Tensor, start: int, stop: int, state: ExpertState) -> torch.Tensor:
        """Run decoder layers ``start .. stop-1`` on the current chunk, updating the cache."""

    @abstractmethod
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head (+ the family's logit soft-capping, if any) -> ``[B, T, V]``."""

    def crop(self, state: ExpertState, length: int) -> None:
        """Forget everything after the first ``length`` tokens seen (cache and mask).

        The next ``embed`` continues from token ``length``; the current chunk is dropped."""
        if not 0 <= length <= state.seen_tokens:
            raise ValueError(f"cannot crop to {length} tokens: the state has seen {state.seen_tokens}")
        crop_cache(state.cache, length)
        if state.attention_mask is not None:
            state.attention_mask = state.attention_mask[:, :length]
        state.chunk = {}

    # Whether a state may be continued with key positions masked out in the *middle* of its mask (``fork``
    # then masking a row's later past): true where positions, rotary tables and masks all come from the 2-D
    # mask's running count.  ALiBi families whose bias depends on the raw key index say False.
    forks_with_gaps: ClassVar[bool] = True

    @property
    def attention_window(self) -> int | None:
        """The smallest sliding window any layer attends through; None when every layer sees the whole past."""
        return None

    def fork(self, state: ExpertState, rows: int) -> ExpertState:
        """A new state holding ``rows`` copies of the one-row ``state`` (cache and mask), to continue one prefix
        in several ways in one batch; ``state`` itself is unchanged."""
        if state.attention_mask is not None and state.attention_mask.shape[0] != 1:
            raise ValueError(f"fork needs a one-row state, got {state.attention_mask.shape[0]} rows")
        cache = copy.deepcopy(state.cache)
        if state.seen_tokens:
            cache.batch_repeat_interleave(rows)
        mask = None if state.attention_mask is None else state.attention_mask.repeat(rows, 1)
        return ExpertState(cache=cache, attention_mask=mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: ExpertState | None = None) -> torch.Tensor:
        """Full walk of one chunk -> logits; the oracle is ``model(input_ids, ...).logits``."""
        state = self.new_state() if state is None else state
        hidden = self.embed(input_ids, attention_mask, state)
        hidden = self.run_layers(hidden, 0, self.num_layers, state)
        return self.logits(hidden)

    # -- text ----------------------------------------------------------------------------------
    def encode(self, texts: list[str], add_special_tokens: bool = True) -> Encoded:
        """Tokenise raw texts with this expert's own tokenizer, left-padded, with char spans."""
        tok = self.tokenizer
        enc = tok(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        rows = enc["input_ids"]
        offsets = enc["offset_mapping"]
        width = max((len(r) for r in rows), default=0)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        batch = len(rows)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        start = torch.zeros((batch, width), dtype=torch.long)
        end = torch.zeros((batch, width), dtype=torch.long)
        for b, (row, offs) in enumerate(zip(rows, offsets, strict=True)):
            n = len(row)
            if n == 0:
                continue
            ids[b, width - n:] = torch.tensor(row, dtype=torch.long)
            mask[b, width - n:] = 1
            spans = torch.tensor(offs, dtype=torch.long).view(n, 2)
            start[b, width - n:] = spans[:, 0]
            end[b, width - n:] = spans[:, 1]
        return Encoded(ids.to(self.device), mask.to(self.device), start.to(self.device), end.to(self.device))


def crop_cache(cache: Any, length: int) -> None:
    """Cut every layer of a transformers ``DynamicCache`` back to its first ``length`` tokens.

    ``Cache.crop`` in transformers 5 takes a negative count and cannot roll a sliding-window layer
    back past its window; sliding layers made by ``new_state`` record their full past, so they are
    cut here directly (keys, values and ``cumulative_length`` together)."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        if getattr(layer, "is_sliding", False):
            if layer.keys.shape[-2] != layer.cumulative_length:
                raise RuntimeError("cannot crop past the sliding window of a cache that keeps only the "
                                   "window; make the state with new_state(croppable=True)")
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
            layer.cumulative_length = min(layer.cumulative_length, length)
        else:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)


def positions_from_mask(full_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Position ids ``[B, new_tokens]`` of the last ``new_tokens`` entries of ``full_mask``:
    ``cumsum(mask) - 1`` with pads set to 1 (as HF ``generate()`` does)."""
    pos = full_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(full_mask == 0, 1)
    return pos[:, -new_tokens:]
