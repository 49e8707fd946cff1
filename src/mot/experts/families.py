"""The adapter registry: one small ``GenericAdapter`` subclass per family (transformers 5.x).

Every family is walked by ``mot.experts.generic.GenericAdapter`` (decoder layers called with the
standard keyword arguments their ``forward`` names); a class here only says how HF picks each layer's
mask (full / sliding window / per ``config.layer_types``) and overrides a hook where the family differs
outside its layers: learned absolute positions (GPT-2, StarCoder 1), embedding dropout as a function
(Starcoder2), soft-capped logits (Gemma 3), a text model inside a multimodal wrapper (Gemma 3).  The
families of issue 19 (OLMo 1-3, Granite, Phi, Falcon, StableLM, Cohere, Mixtral, Qwen-MoE, Gemma 2, MPT,
BLOOM, OPT) live in ``mot.experts.generic``.  Families that cannot be walked are refused with one line
saying why.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mot.experts.adapter import ExpertAdapter, UnsupportedArchitectureError
from mot.experts.generic import GENERIC_ADAPTERS, GenericAdapter

__all__ = ["SUPPORTED_FAMILIES", "adapter_for"]


# -- Llama-like: rotary + keyword-argument decoder layers ------------------------------------------
class LlamaLikeAdapter(GenericAdapter):
    family = "llama"


class MistralAdapter(GenericAdapter):
    family = "mistral"
    mask_policy = "sliding_if_window"


class Qwen2Adapter(GenericAdapter):
    family = "qwen2"
    mask_policy = "layer_types"


class Qwen3Adapter(GenericAdapter):
    family = "qwen3"  # q/k norms are inside the attention module
    mask_policy = "layer_types"


class Starcoder2Adapter(GenericAdapter):
    family = "starcoder2"  # LayerNorms with biases; final norm is still ``model.model.norm``
    mask_policy = "sliding_if_window"

    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder.embed_tokens(input_ids)
        return nn.functional.dropout(hidden, p=self.config.embedding_dropout, training=self.decoder.training)


class Phi3Adapter(GenericAdapter):
    family = "phi3"  # fused qkv / gate_up projections are inside the layer
    mask_policy = "sliding_if_window"


class GemmaAdapter(GenericAdapter):
    family = "gemma"  # the sqrt(hidden) embedding scale is inside the embedding module


class Gemma3TextAdapter(GenericAdapter):
    """Gemma 3 (``Gemma3ForCausalLM``): sliding and full layers, each type with its own mask and its
    own rotary table (different rope theta), soft-capped final logits when configured."""

    family = "gemma3_text"
    mask_policy = "layer_types"
    soft_caps_logits = True


class Gemma3Adapter(Gemma3TextAdapter):
    """Gemma 3 with a vision tower (``Gemma3ForConditionalGeneration``, what ``AutoModelForCausalLM``
    loads for a multimodal Gemma 3 checkpoint), walked as a text-only LM over its language model.
    Its HF forward applies no final soft-capping, so neither does the walk."""

    family = "gemma3"
    soft_caps_logits = False

    @property
    def decoder(self) -> nn.Module:
        return self.model.model.language_model


# -- GPT-style: learned absolute positions ---------------------------------------------------------
class GPT2Adapter(GenericAdapter):
    family = "gpt2"

    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder.drop(self.decoder.wte(input_ids) + self.decoder.wpe(positions))


class GPTBigCodeAdapter(GPT2Adapter):
    """StarCoder 1 / SantaCoder. Multi-query keys/values are cached as one head ``[B, 1, T, D]``."""

    family = "gpt_bigcode"


class GPTNeoXAdapter(GenericAdapter):
    family = "gpt_neox"  # partial rotary and the parallel residual are inside the layer


# -- registry --------------------------------------------------------------------------------------
_ADAPTERS: dict[str, type[GenericAdapter]] = {
    cls.family: cls
    for cls in (
        LlamaLikeAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Starcoder2Adapter, Phi3Adapter,
        GemmaAdapter, Gemma3TextAdapter, Gemma3Adapter, GPT2Adapter, GPTBigCodeAdapter, GPTNeoXAdapter,
        *GENERIC_ADAPTERS,
    )
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_ADAPTERS))

# Causal LM families that cannot be walked as "embed, layers over a per-token KV cache, head", and why.
_RECURRENT = ("its layers carry a recurrent state, not a per-token KV cache, so mot cannot crop a peer back "
              "to an earlier token")
_REFUSED: dict[str, str] = {
    **dict.fromkeys(("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"),
                    f"a state-space / recurrent model: {_RECURRENT}"),
    **dict.fromkeys(("jamba", "zamba", "zamba2", "bamba", "falcon_h1", "granitemoehybrid", "lfm2", "qwen3_next"),
                    f"a hybrid of attention and state-space / linear-attention layers: {_RECURRENT}"),
}


def adapter_for(model: nn.Module, tokenizer: Any) -> ExpertAdapter:
    """The adapter for ``model`` (chosen by ``model.config.model_type``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = _ADAPTERS.get(model_type)
    if cls is None:
        why = _REFUSED.get(model_type)
        if why is not None:
            raise UnsupportedArchitectureError(f"architecture {model_type!r} ({type(model).__name__}) is not "
                                               f"supported as an expert: {why}")
        raise UnsupportedArchitectureError(
            f"no expert adapter for architecture {model_type!r} ({type(model).__name__}); "
            f"supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return cls(model, tokenizer)
