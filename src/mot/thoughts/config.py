"""``MoTConfig``: every Mixture-of-Thoughts option in one validated schema (an experiment is a config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mot.config import ConfigModel

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


class MoTConfig(ConfigModel):
    """Options of a Mixture of Thoughts over frozen HF experts.

    The upstream field names are kept (``num_stacks``, ``top_k``, ``shared_dim``, ``router_hidden_dim``,
    ``interaction_heads``, ``dropout``, ``router_type``, ``gumbel_tau``, ``lambda_consistency``,
    ``entropy_weight``, ``balance_weight``).  Ranges that need the experts (``top_k`` <= number of
    experts, ``num_stacks`` <= the smallest layer count, ``shared_dim`` divisible by
    ``interaction_heads``) are checked when the model is built.
    """

    num_stacks: int = Field(4, ge=1, description="contiguous layer chunks per expert; interaction after each")
    top_k: int = Field(3, ge=1, description="experts active per sample (the primary plus top_k-1 peers)")
    shared_dim: int | None = Field(None, ge=1, description="interaction width; None: smallest expert hidden size")
    router_hidden_dim: int = Field(256, ge=1)
    router_layers: int = Field(2, ge=1, description="hidden layers of the 'mlp' router")
    interaction_heads: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout in the router and the interaction layers")
    router_type: str = Field("mlp", description="registered router name (linear, mlp, noisy_topk, gumbel_topk) "
                                                 "or an import path 'package.module:Class'")
    router_options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the router")
    gumbel_tau: float = Field(1.0, gt=0.0, description="temperature of the gumbel_topk router")
    lambda_consistency: float = Field(
        0.05, ge=0.0,
        description="weight of the consistency loss: symmetric KL between the model's OUTPUT distributions "
                    "(target tokens) under two stochastic routing passes in train mode, over the samples whose "
                    "passes chose the same primary (mot.thoughts.training.mot_objective; 0 turns it off and "
                    "saves the second pass)")
    entropy_weight: float = Field(0.01, ge=0.0, description="weight of the router entropy bonus")
    balance_weight: float = Field(0.01, ge=0.0, description="weight of the load-balancing loss")
    encoder: str = Field(DEFAULT_ENCODER, min_length=1,
                         description="sentence-transformers model name or local path for router features")
    max_prompt_chars: int = Field(4096, ge=1, description="router features read at most this many prompt characters")
    peer_visibility: Literal["stable", "exact", "span"] = Field(
        "stable",
        description="which peer tokens a primary token may attend to. 'stable': only peer tokens whose "
                    "tokenisation can no longer change given the text the primary token has seen (strictly "
                    "no leakage, whatever the tokenizers); 'span': every peer token whose character span ends "
                    "at or before the primary token's (peers' BPE merges may depend on later characters "
                    "inside the last word); 'exact': like 'stable' (the peer's own tokenisation of the cut "
                    "text, so no leakage) but cut at the primary token's known end itself, without the one "
                    "pre-token lag (more cut texts differ from the whole text's tokenisation: more branch "
                    "states to compute)")

    peers: Literal["routed", "self", "adapter"] = Field(
        "routed",
        description="whose states fill the peer slots. 'routed': the router's top-k peers (Mixture of Thoughts); "
                    "'self': the capacity control -- every peer slot holds a copy of the primary (its own frozen "
                    "states, read through the primary's projection), with the same router, interaction layers, "
                    "trainable size and training; MoT minus this control is what collaboration adds; "
                    "'adapter': the second capacity control -- no peers at all: each interaction layer's own "
                    "parameters act as a token-wise MLP adapter on the routed primary (same trainable size, "
                    "its update scaled by the primary's routing weight so the LM loss reaches the router)")

    interaction_scale: Literal["keys_values", "values", "none"] = Field(
        "keys_values",
        description="how a peer's routing weight scales what it exposes: its keys and values (upstream; the key "
                    "scale also changes the attention temperature), its values only, or nothing (then the LM "
                    "loss does not reach the router through the peers)")
    peer_stack: Literal["same", "last"] = Field(
        "same", description="which peer states the primary's interaction after stack q reads: the peer's states "
                            "after its stack q ('same'), or after its last stack ('last': its most processed view)")
    peer_readout: Literal["hidden", "prediction"] = Field(
        "hidden", description="what a peer exposes: its hidden states, or its next-token prediction as a vector "
                              "(the logit lens: softmax(final norm + LM head) times the LM head's rows)")
    interaction_position: Literal["none", "recency"] = Field(
        "none", description="position information of the interaction attention: none (content only, upstream), "
                            "or 'recency': a learned per-head bias -slope*log(1+d), d = how many of the peer tokens "
                            "a primary token may read come after the one attended to (0: the latest visible), so a "
                            "head can read the peer tokens about the text it is at")
    gate_init: float = Field(0.0, description="initial value of every interaction gate; 0: an untrained MoT is "
                                              "exactly its primary expert")

    @model_validator(mode="after")
    def _check_router(self) -> MoTConfig:
        if self.router_type.strip() == "":
            raise ValueError("router_type must name a router (linear, mlp, noisy_topk, gumbel_topk) or 'pkg.mod:Class'")
        return self
