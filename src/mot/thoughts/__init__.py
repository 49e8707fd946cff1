"""Mixture of Thoughts: a prompt router over frozen heterogeneous HF experts, with stack-wise
cross-expert attention under a character-offset causal mask, and KV-cached generation."""

from mot.thoughts.alignment import TokenSpans, VisibilityRule, encode_pair, known_ends, visibility_mask
from mot.thoughts.config import MoTConfig
from mot.thoughts.features import HashingEncoder, PromptEncoder, SentenceEncoder, make_encoder
from mot.thoughts.generation import (
    FullDecoder,
    FullDecodeStats,
    MoTDecoder,
    MoTTextGenerator,
    recompute_next_logits,
)
from mot.thoughts.interaction import InteractionLayer
from mot.thoughts.model import MixtureOfThoughts, MoTOutput, PeerStates, lm_loss, split_layers
from mot.thoughts.training import training_loss

__all__ = [
    "FullDecodeStats",
    "FullDecoder",
    "HashingEncoder",
    "InteractionLayer",
    "MixtureOfThoughts",
    "MoTDecoder",
    "MoTConfig",
    "MoTOutput",
    "MoTTextGenerator",
    "PeerStates",
    "PromptEncoder",
    "SentenceEncoder",
    "TokenSpans",
    "VisibilityRule",
    "encode_pair",
    "known_ends",
    "lm_loss",
    "make_encoder",
    "recompute_next_logits",
    "split_layers",
    "training_loss",
    "visibility_mask",
]
