"""The generic adapter: one walk for every decoder whose layers follow transformers' standard signature.

``GenericAdapter`` walks a decoder whose layers take the standard keyword arguments (hidden states,
``attention_mask``, ``position_ids``, the cache as ``past_key_values`` or ``layer_past``, ``use_cache``,
rotary ``position_embeddings``, an ALiBi bias as ``alibi`` or ``position_bias``).  It finds the modules
by inspection (base model, layer list, final norm, rotary table -- one per layer type when the rotary
module takes a ``layer_type``) and passes each layer only the arguments its ``forward`` names.  The
masks come from ``transformers.masking_utils`` exactly as the HF forward builds them: the 2-D mask over
every token seen so far (left padding included) plus the cache's offsets give padding + causal
(+ sliding window) masks for each new chunk, one per layer type.

What a family does outside its layers is a small hook on a subclass (here and in
``mot.experts.families``): embedding scale, learned absolute positions, an embedding norm, ALiBi biases,
logit scaling or soft-capping, projections around the layers.  Parallel attention/MLP, q/k norms,
attention soft-capping, MoE blocks and residual multipliers live inside the layers and need nothing.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from mot.experts.adapter import (
    ExpertAdapter,
    ExpertState,
    UnsupportedArchitectureError,
    positions_from_mask,
)

FULL = "full_attention"
SLIDING = "sliding_attention"
MASK_BUILDERS: dict[str, Callable[..., Any]] = {
    FULL: create_causal_mask,
    SLIDING: create_sliding_window_causal_mask,
}
_LAYER_CONTAINERS = ("layers", "h", "blocks")
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm")
_EMBED_DROPOUTS = ("embed_dropout", "emb_dropout", "drop")
# The keyword arguments of a standard decoder layer; each layer gets those its forward names.
_CACHE_ARGS = ("past_key_values", "layer_past")
_KNOWN_LAYER_ARGS = ("attention_mask", "position_ids", *_CACHE_ARGS, "use_cache", "position_embeddings",
                     "alibi", "position_bias", "output_attentions")


class GenericAdapter(ExpertAdapter):
    """Any decoder whose layers take transformers' standard keyword arguments (see the module doc).

    Subclasses set ``family`` and ``mask_policy`` and, where the family differs outside its layers,
    override one hook: ``decoder`` (a wrapped text model), ``_embed_tokens`` (scale, positions, embedding
    norm), ``_chunk_masks`` / ``_chunk_extras`` (ALiBi), ``_pre_head`` (projections) or ``_scale_logits``.
    """

    family = "generic"
    # How HF chooses each layer's mask: "causal" (every layer full), "sliding_if_window" (every layer
    # sliding when ``config.sliding_window`` is set: Mistral, Mixtral, Starcoder2, Phi-3) or "layer_types"
    # (``config.layer_types`` per layer: Qwen2/3, Gemma 2/3, OLMo 3).
    mask_policy: ClassVar[str] = "causal"
    soft_caps_logits: ClassVar[bool] = False  # ``config.final_logit_softcapping`` (Gemma 2/3)

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__(model, tokenizer)
        # The decoder's own config (the text config of a multimodal wrapper such as Gemma 3).
        self.config = model.config.get_text_config(decoder=True)
        if getattr(self.config, "use_bidirectional_attention", False):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} uses bidirectional attention (an encoder); "
                "mot needs a causal LM"
            )
        self.layers: nn.ModuleList = self._find_layers()
        self.layer_types: list[str] = self._layer_types()
        norm = next((getattr(self.decoder, n) for n in _FINAL_NORMS if hasattr(self.decoder, n)), "missing")
        if norm == "missing":
            raise UnsupportedArchitectureError(
                f"{self.family}: no final norm found on {type(self.decoder).__name__} "
                f"(looked for {', '.join(_FINAL_NORMS)})")
        self._final_norm: nn.Module = nn.Identity() if norm is None else norm  # OPT-350m has none
        self._layer_args = self._accepted_layer_args()
        rotary = getattr(self.decoder, "rotary_emb", None)
        self._rotary: nn.Module | None = rotary
        self._rotary_per_type = rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters

    # -- modules -------------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """The base model holding embeddings, layers and final norm (``model.model`` for Llama)."""
        base = self.model.base_model
        inner = getattr(base, "decoder", None)  # OPT: OPTModel.decoder holds the layers
        if isinstance(inner, nn.Module) and not any(hasattr(base, n) for n in _LAYER_CONTAINERS):
            return inner
        return base

    @property
    def final_norm(self) -> nn.Module:
        return self._final_norm

    def _find_layers(self) -> nn.ModuleList:
        for name in _LAYER_CONTAINERS:
            layers = getattr(self.decoder, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
        raise UnsupportedArchitectureError(
            f"{self.family}: no decoder layer list on {type(self.decoder).__name__} "
            f"(looked for {', '.join(_LAYER_CONTAINERS)})")

    def _accepted_layer_args(self) -> tuple[str, ...]:
        """The standard arguments the layers' ``forward`` names; refuse layers that need others."""
        classes = {type(layer) for layer in self.layers}
        if len(classes) != 1:
            names = ", ".join(sorted(c.__name__ for c in classes))
            raise UnsupportedArchitectureError(f"{self.family}: mixed decoder layer classes ({names})")
        params = list(inspect.signature(self.layers[0].forward).parameters.values())[1:]  # after hidden states
        named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        required = sorted(p.name for p in params if p.default is p.empty
                          and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _KNOWN_LAYER_ARGS)
        layer = type(self.layers[0]).__name__
        if required:
            raise UnsupportedArchitectureError(
                f"{self.family}: {layer}.forward needs {', '.join(required)}, outside the standard decoder "
                "layer signature the generic adapter passes")
        if not named & set(_CACHE_ARGS):
            raise UnsupportedArchitectureError(
                f"{self.family}: {layer}.forward takes no KV cache (past_key_values / layer_past); "
                "mot needs cached decoding")
        return tuple(a for a in _KNOWN_LAYER_ARGS if a in named and a != "output_attentions")

    def _layer_types(self) -> list[str]:
        n = len(self.layers)
        if self.mask_policy == "layer_types":
            types = list(self.config.layer_types)[:n]
        elif self.mask_policy == "sliding_if_window" and getattr(self.config, "sliding_window", None) is not None:
            types = [SLIDING] * n
        else:
            types = [FULL] * n
        unknown = sorted(set(types) - set(MASK_BUILDERS))
        if unknown:
            raise UnsupportedArchitectureError(
                f"{self.family}: layer types {unknown} are not supported (only {FULL}, {SLIDING})"
            )
        return types

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def attention_window(self) -> int | None:
        window = getattr(self.config, "sliding_window", None)
        return int(window) if window is not None and SLIDING in self.layer_types else None

    # -- hooks ---------------------------------------------------------------------------------
    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (Gemma's sqrt(hidden) scale lives inside its embedding module) + dropout."""
        hidden = self.model.get_input_embeddings()(input_ids)
        for name in _EMBED_DROPOUTS:
            module = getattr(self.decoder, name, None)
            if isinstance(module, nn.Dropout):
                return module(hidden)
        return hidden

    def _chunk_masks(self, hidden: torch.Tensor, full_mask: torch.Tensor, positions: torch.Tensor,
                     state: ExpertState) -> dict[str, Any]:
        """One attention mask per layer type for the new chunk, sized against the cache *before* the
        chunk is added, as in the HF forward."""
        return {
            kind: MASK_BUILDERS[kind](
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=full_mask,
                past_key_values=state.cache,
                position_ids=positions,
            )
            for kind in sorted(set(self.layer_types))
        }

    def _chunk_extras(self, hidden: torch.Tensor, positions: torch.Tensor, full_mask: torch.Tensor) -> dict:
        """Per-chunk inputs beyond the masks, shared by all layers: rotary tables (per layer type)."""
        if self._rotary is None:
            return {}
        if self._rotary_per_type:
            return {"rotary": {kind: self._rotary(hidden, positions, kind) for kind in sorted(set(self.layer_types))}}
        table = self._rotary(hidden, position_ids=positions)
        return {"rotary": dict.fromkeys(set(self.layer_types), table)}

    def _pre_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """What runs between the last layer and the LM head (the final norm)."""
        return self.final_norm(hidden)

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.config, "final_logit_softcapping", None) if self.soft_caps_logits else None
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- the walk ------------------------------------------------------------------------------
    def new_state(self, *, croppable: bool = True) -> ExpertState:
        """A fresh state with its own ``DynamicCache``.

        With ``croppable`` (the default) sliding-window layers keep every past key, so ``crop`` can
        roll back any number of tokens; attention still sees only the window.  ``croppable=False``
        keeps only the window in those layers (bounded memory for long generations) and ``crop``
        then works only while the sequence is shorter than the window."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if croppable:
            for layer in cache.layers:
                if getattr(layer, "is_sliding", False):
                    layer.activate_past_recording()
        return ExpertState(cache=cache)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              state: ExpertState) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                             f"input_ids {tuple(input_ids.shape)}")
        if state.attention_mask is not None and state.attention_mask.shape[0] != input_ids.shape[0]:
            raise ValueError(f"batch size {input_ids.shape[0]} differs from the state's "
                             f"{state.attention_mask.shape[0]}")
        full_mask = attention_mask if state.attention_mask is None else torch.cat(
            [state.attention_mask, attention_mask], dim=1)
        positions = positions_from_mask(full_mask, input_ids.shape[1])
        hidden = self._embed_tokens(input_ids, positions)
        masks = self._chunk_masks(hidden, full_mask, positions, state)
        state.attention_mask = full_mask
        chunk = {"positions": positions, "masks": masks, "length": input_ids.shape[1],
                 **self._chunk_extras(hidden, positions, full_mask)}
        chunk["layer_kwargs"] = {kind: self._layer_kwargs(kind, chunk, state) for kind in set(self.layer_types)}
        state.chunk = chunk
        return hidden

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int, state: ExpertState) -> torch.Tensor:
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(f"layer range [{start}, {stop}) outside [0, {self.num_layers}]")
        if not state.chunk:
            raise RuntimeError("run_layers before embed: call embed() to start a chunk")
        for index in range(start, stop):
            hidden = self._call_layer(index, hidden, state)
        return hidden

    def _layer_kwargs(self, kind: str, chunk: dict, state: ExpertState) -> dict[str, Any]:
        """The keyword arguments every layer of type ``kind`` gets for this chunk (those it names)."""
        values = {
            "attention_mask": chunk["masks"][kind],
            "position_ids": chunk["positions"],
            "past_key_values": state.cache,
            "layer_past": state.cache,
            "use_cache": True,
            "position_embeddings": chunk["rotary"][kind] if "rotary" in chunk else None,
            "alibi": chunk.get("alibi"),
            "position_bias": chunk.get("alibi"),
        }
        return {name: values[name] for name in self._layer_args}

    def _call_layer(self, index: int, hidden: torch.Tensor, state: ExpertState) -> torch.Tensor:
        out = self.layers[index](hidden, **state.chunk["layer_kwargs"][self.layer_types[index]])
        return out[0] if isinstance(out, tuple) else out  # Falcon, BLOOM and MPT blocks return (hidden, attn)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._scale_logits(self.model.get_output_embeddings()(self._pre_head(hidden)))


# -- families that differ outside their layers -----------------------------------------------------
class OlmoAdapter(GenericAdapter):
    family = "olmo"


class Olmo2Adapter(GenericAdapter):
    family = "olmo2"  # post-norms and q/k norms are inside the layer


class Olmo3Adapter(GenericAdapter):
    family = "olmo3"  # sliding and full layers, one rotary table per layer type
    mask_policy = "layer_types"


class GraniteAdapter(GenericAdapter):
    """Granite: embeddings times ``embedding_multiplier``, logits divided by ``logits_scaling``
    (attention and residual multipliers are inside the layer)."""

    family = "granite"

    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids) * self.config.embedding_multiplier

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.config.logits_scaling


class PhiAdapter(GenericAdapter):
    family = "phi"  # parallel attention/MLP and partial rotary are inside the layer


class StableLmAdapter(GenericAdapter):
    family = "stablelm"  # optional parallel residual and q/k norms are inside the layer


class CohereAdapter(GenericAdapter):
    """Cohere (Command-R): parallel attention/MLP inside the layer; logits times ``logit_scale``."""

    family = "cohere"

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.config.logit_scale


class MixtralAdapter(GenericAdapter):
    family = "mixtral"  # sparse MoE block inside the layer; sliding everywhere when a window is set
    mask_policy = "sliding_if_window"


class Qwen2MoeAdapter(GenericAdapter):
    family = "qwen2_moe"  # routed + shared experts inside the layer
    mask_policy = "layer_types"


class Qwen3MoeAdapter(GenericAdapter):
    family = "qwen3_moe"
    mask_policy = "sliding_if_window"


class Gemma2Adapter(GenericAdapter):
    """Gemma 2: alternating sliding/full layers, attention soft-capping inside the layer, soft-capped
    final logits; the sqrt(hidden) embedding scale is inside the embedding module."""

    family = "gemma2"
    mask_policy = "layer_types"
    soft_caps_logits = True


class FalconAdapter(GenericAdapter):
    """Falcon: rotary by default; with ``config.alibi`` the ALiBi bias (from the 2-D mask, so left padding
    keeps each row's own distances) is folded into an always-materialised mask, as the HF forward does."""

    family = "falcon"

    def _chunk_masks(self, hidden: torch.Tensor, full_mask: torch.Tensor, positions: torch.Tensor,
                     state: ExpertState) -> dict[str, Any]:
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=full_mask,
                                  past_key_values=state.cache, allow_is_causal_skip=False)
        if self.config.alibi and mask is not None and mask.ndim == 4:
            from transformers.models.falcon.modeling_falcon import build_alibi_tensor

            heads = self.config.num_attention_heads
            lowest = torch.finfo(hidden.dtype).min
            if mask.dtype == torch.bool:
                mask = torch.where(mask, torch.zeros((), dtype=hidden.dtype, device=mask.device), lowest)
            alibi = build_alibi_tensor(full_mask, heads, dtype=hidden.dtype)
            alibi = alibi.reshape(hidden.shape[0], heads, *alibi.shape[1:])
            mask = torch.masked_fill(alibi / math.sqrt(self.hidden_size // heads), mask < -1, lowest)
        return {FULL: mask}

    def _chunk_extras(self, hidden: torch.Tensor, positions: torch.Tensor, full_mask: torch.Tensor) -> dict:
        extras = super()._chunk_extras(hidden, positions, full_mask)
        if self.config.alibi:
            from transformers.models.falcon.modeling_falcon import build_alibi_tensor

            # The layers take the bias too: it tells their attention to skip the rotary embedding.
            extras["alibi"] = build_alibi_tensor(full_mask, self.config.num_attention_heads, dtype=hidden.dtype)
        return extras


class BloomAdapter(GenericAdapter):
    """BLOOM: a LayerNorm right after the embedding, ALiBi biases built from the 2-D mask."""

    family = "bloom"

    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder.word_embeddings_layernorm(self.decoder.word_embeddings(input_ids))

    def _chunk_extras(self, hidden: torch.Tensor, positions: torch.Tensor, full_mask: torch.Tensor) -> dict:
        return {"alibi": self.decoder.build_alibi_tensor(full_mask, self.decoder.num_heads, dtype=hidden.dtype)}


class MptAdapter(GenericAdapter):
    """MPT: ALiBi over the model's maximum length (a per-key bias: softmax is shift-invariant, so left
    padding changes nothing) and a boolean "masked out" mask, as the HF forward builds them."""

    family = "mpt"
    forks_with_gaps = False  # the bias counts raw key indices, so a gap in the mask would shift it

    def _chunk_masks(self, hidden: torch.Tensor, full_mask: torch.Tensor, positions: torch.Tensor,
                     state: ExpertState) -> dict[str, Any]:
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=full_mask,
                                  past_key_values=state.cache)
        return {FULL: mask.to(torch.bool)}  # MPT runs eager attention only: an additive mask, nonzero = masked

    def _chunk_extras(self, hidden: torch.Tensor, positions: torch.Tensor, full_mask: torch.Tensor) -> dict:
        if full_mask.shape[1] > self.config.max_seq_len:
            raise ValueError(f"mpt: {full_mask.shape[1]} tokens exceed the model's max_seq_len "
                             f"{self.config.max_seq_len} (its ALiBi table)")
        return {"alibi": self.decoder.build_mpt_alibi_tensor(self.config.n_heads, self.config.max_seq_len,
                                                             device=hidden.device)}


class OPTAdapter(GenericAdapter):
    """OPT: learned absolute positions (offset by 2 inside the module), optional projections between
    the embedding width and the hidden width, optional final norm."""

    family = "opt"

    def _embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder
        hidden = decoder.embed_tokens(input_ids)
        if decoder.project_in is not None:
            hidden = decoder.project_in(hidden)
        return hidden + decoder.embed_positions(None, 0, position_ids=positions)

    def _pre_head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.final_norm(hidden)
        return hidden if self.decoder.project_out is None else self.decoder.project_out(hidden)


GENERIC_ADAPTERS: tuple[type[GenericAdapter], ...] = (
    OlmoAdapter, Olmo2Adapter, Olmo3Adapter, GraniteAdapter, PhiAdapter, StableLmAdapter, CohereAdapter,
    MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, Gemma2Adapter, FalconAdapter, BloomAdapter, MptAdapter,
    OPTAdapter,
)
