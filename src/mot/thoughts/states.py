"""Small pieces the MoT forward, its decoder and its training share: a peer's cached states, the
decoder's counters, left padding, and an expert's pad and end-of-sequence ids.

They sit below ``mot.thoughts.model`` so the decoder (``mot.thoughts.generation``) and the training
code need not import the model module for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mot.thoughts.alignment import TokenSpans


@dataclass
class PeerStates:
    """One sample as seen by one expert acting as a peer: frozen hidden states after every stack.

    They depend on ``(prompt, completion)`` and the expert only, never on the router or the
    primary, so a trainer may compute them once per sample and expert and pass them back in
    (``MixtureOfThoughts.forward(..., peer_states=...)``).  Detached; may live on the CPU.
    """

    expert: int
    tokens: TokenSpans
    ends: torch.Tensor  # [T] how far into the text each token's state reaches
    hidden: list[torch.Tensor]  # num_stacks x [T, H_expert]
    # states of the cut texts whose tokenisation is not a prefix of ``tokens`` (``peer_visibility="stable"``):
    # (prefix length, tail ids) -> num_stacks x [len(tail), H_expert]; filled as primaries need them
    branches: dict[tuple[int, tuple[int, ...]], list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class FullDecodeStats:
    """Counters of full-mode decoding (``MixtureOfThoughts.generate(..., mode="full", stats=...)``)."""

    peer_rollbacks: int = 0  # times a peer's cache was cropped because its tail tokenisation changed
    primary_refeeds: int = 0  # times primary tokens were re-fed after a peer rollback
    tail_retokenisations: int = 0


def left_pad(rows: Sequence[torch.Tensor], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D ``rows`` left-padded: ``(ids [B, T], mask [B, T])``."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = 1
    return ids, mask


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad id, else its EOS id, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def eos_ids(adapter: Any) -> set[int]:
    """Every end-of-sequence id of an expert's ``ExpertAdapter`` (tokenizer and generation config)."""
    ids: set[int] = set()
    if adapter.tokenizer.eos_token_id is not None:
        ids.add(int(adapter.tokenizer.eos_token_id))
    gen = getattr(adapter.model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(value, int):
        ids.add(value)
    elif isinstance(value, list | tuple):
        ids.update(int(v) for v in value)
    return ids


__all__ = ["FullDecodeStats", "PeerStates", "eos_ids", "left_pad", "pad_id"]
