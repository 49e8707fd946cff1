"""``MixtureOfThoughts``: a router over frozen heterogeneous HF experts with stack-wise interaction.

Data flow of one forward (see docs/ARCHITECTURE.md): prompt -> sentence features -> router
(once per sequence) -> top-k experts, the first is the primary -> every active expert tokenises
``prompt + completion`` itself -> peers walk all their stacks (their states depend on the input
alone: ``compute_peer_states``, cacheable) -> the primary walks stack by stack, cross-attending to
the peers after each stack (``InteractionLayer``) -> the primary's final norm + LM head.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mot.errors import UsageError
from mot.experts import ExpertAdapter, adapter_for
from mot.generation import GenerationParams
from mot.routing import RoutingDecision, build_router, entropy_loss, load_balancing_loss
from mot.thoughts.alignment import (
    TokenSpans,
    VisibilityRule,
    cut_token_ids,
    encode_pair,
    known_ends,
    peer_distance,
    peer_ends,
    plan_cuts,
    visibility_mask,
)
from mot.thoughts.config import MoTConfig
from mot.thoughts.features import PromptEncoder, make_encoder
from mot.thoughts.interaction import InteractionLayer
from mot.thoughts.states import FullDecodeStats, PeerStates, left_pad
from mot.thoughts.states import eos_ids as eos_ids  # re-exported: it lived here
from mot.thoughts.states import pad_id as _pad_id


@dataclass
class PeerView:
    """A peer's states as one primary sample sees them (internal)."""

    expert: int
    visible: torch.Tensor  # [Tp, Tk] bool: which of the Tk states each primary token reads
    weight: torch.Tensor  # scalar routing weight (differentiable)
    hidden: list[torch.Tensor]  # per stack [Tk, H]: the whole text's states, then any branch tails


@dataclass
class MoTOutput:
    """Result of ``MixtureOfThoughts.forward`` for ``B`` samples.

    Vocabularies differ per primary expert, so per-sample results are lists (no padding):
    ``logits[b]`` is ``[T_b, V_primary(b)]`` over ``tokens[b]``, the primary's tokens of
    ``prompt + completion`` (``tokens[b].num_prompt_tokens`` of them belong to the prompt) -- or, from a
    ``forward(..., target_logits_only=True)``, over its positions ``logits_start[b]..`` only (every
    position that predicts a completion token is among them; ``rows(b, positions)`` indexes either way).
    """

    logits: list[torch.Tensor]
    tokens: list[TokenSpans]
    primary: list[int]
    routing: RoutingDecision
    aux_losses: dict[str, torch.Tensor]
    eos_token_ids: list[int | None]
    has_completion: bool
    # weighted sum of aux_losses (``balance``, ``entropy``; config weights).  The consistency term needs
    # two routing passes: see ``mot.thoughts.training.mot_objective`` (``training_loss``).
    aux_loss: torch.Tensor = field(default=None)
    logits_start: list[int] = field(default_factory=list)  # empty: every logits[b] starts at position 0

    def rows(self, b: int, positions: torch.Tensor) -> torch.Tensor:
        """Sample ``b``'s logits at token ``positions`` (whatever ``logits_start`` is)."""
        start = self.logits_start[b] if self.logits_start else 0
        return self.logits[b][positions - start if start else positions]


# about how many bytes of copied peer cache one batch of branch tails may hold (``_branch_states``)
_FORK_BYTES = 256 * 2**20


def _cache_bytes(cache: Any) -> int:
    """Bytes of a transformers cache's keys and values (0 for an empty one)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def split_layers(num_layers: int, num_stacks: int) -> list[tuple[int, int]]:
    """``num_stacks`` contiguous ``(start, stop)`` layer ranges, sizes differing by at most one."""
    base, extra = divmod(num_layers, num_stacks)
    bounds, start = [], 0
    for i in range(num_stacks):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _router_options(config: MoTConfig) -> dict[str, Any]:
    common = {"hidden_dim": config.router_hidden_dim, "num_layers": config.router_layers,
              "dropout": config.dropout}
    options: dict[str, Any] = {
        "linear": {},
        "mlp": common,
        "noisy_topk": common,
        "gumbel_topk": {**common, "tau": config.gumbel_tau},
    }.get(config.router_type, {})
    return {**options, **config.router_options}


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block on the CPU default generator seeded with ``seed``, then restore its state (CUDA
    generators are left alone: parameters are created on the CPU).  ``None``: no change."""
    if seed is None:
        yield
        return
    saved = torch.get_rng_state()
    torch.default_generator.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.set_rng_state(saved)


class MixtureOfThoughts(nn.Module):
    """Frozen experts + a trainable prompt router and per-stack interaction layers.

    ``expert_models``/``tokenizers``: HF causal LMs and their tokenizers (any supported family,
    any mix of vocabularies and sizes).  ``expert_specs``: how each expert was loaded (hub id,
    path, ...), recorded in checkpoints; defaults to ``config._name_or_path``.  ``encoder``: the
    router's feature encoder (default: ``config.encoder`` loaded lazily).  ``seed``: initialise the
    router and the interaction layers from this seed alone (the CPU generator is seeded for their
    construction and its previous state restored after: the global RNG state neither matters nor
    changes), so every DDP rank and every fresh run start identically; None: from the global RNG,
    like any ``nn.Module``.
    """

    def __init__(self, expert_models: Sequence[nn.Module], tokenizers: Sequence[Any],
                 config: MoTConfig | None = None, expert_specs: Sequence[str] | None = None,
                 encoder: PromptEncoder | None = None, seed: int | None = None) -> None:
        super().__init__()
        config = MoTConfig() if config is None else config
        if len(expert_models) != len(tokenizers):
            raise UsageError(f"{len(expert_models)} expert models but {len(tokenizers)} tokenizers")
        if not expert_models:
            raise UsageError("a Mixture of Thoughts needs at least one expert")
        self.config = config
        self.adapters: list[ExpertAdapter] = [adapter_for(m, t) for m, t in zip(expert_models, tokenizers, strict=True)]
        self.experts = nn.ModuleList(expert_models)
        for model in expert_models:
            model.requires_grad_(False)
            model.eval()
        num_experts = len(self.adapters)
        if config.top_k > num_experts:
            raise UsageError(f"top_k={config.top_k} but only {num_experts} experts; set top_k <= {num_experts}")
        min_layers = min(a.num_layers for a in self.adapters)
        if config.num_stacks > min_layers:
            raise UsageError(f"num_stacks={config.num_stacks} but the smallest expert has {min_layers} layers; "
                             f"set num_stacks <= {min_layers}")
        self.hidden_sizes = [a.hidden_size for a in self.adapters]
        self.shared_dim = config.shared_dim or min(self.hidden_sizes)
        if self.shared_dim % config.interaction_heads:
            raise UsageError(f"shared_dim={self.shared_dim} is not divisible by interaction_heads="
                             f"{config.interaction_heads}; change one of them")
        self.expert_specs = self._names(expert_models, expert_specs)
        self.stacks = [split_layers(a.num_layers, config.num_stacks) for a in self.adapters]
        self.encoder = make_encoder(config.encoder) if encoder is None else encoder
        with _seeded(seed):
            self.router = build_router(config.router_type, self.encoder.dim, num_experts, config.top_k,
                                       **_router_options(config))
            self.interactions = nn.ModuleList(
                InteractionLayer(self.hidden_sizes, self.shared_dim, config.interaction_heads, config.dropout,
                                 scale=config.interaction_scale, gate_init=config.gate_init,
                                 position=config.interaction_position)
                for _ in range(config.num_stacks))
        device = self.adapters[0].device
        self.router.to(device)
        self.interactions.to(device)

    @staticmethod
    def _names(models: Sequence[nn.Module], specs: Sequence[str] | None) -> list[str]:
        if specs is not None:
            if len(specs) != len(models):
                raise UsageError(f"{len(specs)} expert_specs for {len(models)} experts")
            return [str(s) for s in specs]
        names: list[str] = []
        for i, model in enumerate(models):
            name = getattr(model.config, "_name_or_path", "") or f"{model.config.model_type}-{i}"
            names.append(name if name not in names else f"{name}#{i}")
        return names

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.adapters)

    @property
    def device(self) -> torch.device:
        return next(self.router.parameters()).device

    def train(self, mode: bool = True) -> MixtureOfThoughts:
        super().train(mode)
        for model in self.experts:  # frozen experts never leave eval mode (dropout off)
            model.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Router and interaction weights only (the experts are frozen and stored elsewhere)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("experts.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise KeyError(f"trainable state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        self.load_state_dict(state, strict=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the trainable parts (safetensors) and a config describing the experts; atomic."""
        from mot.thoughts.io import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, experts: Sequence[Any] | None = None, *,
                        encoder: PromptEncoder | None = None, **kwargs: Any) -> MixtureOfThoughts:
        """Rebuild from ``save_pretrained`` output over ``experts`` (``(model, tokenizer)`` pairs or
        specs for ``mot.experts.resolve_expert``; None: the specs recorded in the checkpoint); different
        experts raise ``CheckpointError``."""
        from mot.thoughts.io import from_pretrained

        return from_pretrained(cls, directory, experts, encoder=encoder, **kwargs)

    # -- routing -------------------------------------------------------------------------------
    def features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen sentence features ``[B, D]`` of the prompts (first ``max_prompt_chars`` characters)."""
        limit = self.config.max_prompt_chars
        feats = self.encoder.encode([p[:limit] for p in prompts])
        return feats.to(device=self.device, dtype=next(self.router.parameters()).dtype)

    def route(self, prompts: Sequence[str], features: torch.Tensor | None = None) -> RoutingDecision:
        return self.router(self.features(prompts) if features is None else features)

    # -- generation: thin calls into the decoder (``mot.thoughts.generation.MoTDecoder``) -----------
    def decoder(self) -> Any:
        """This model's ``MoTDecoder``: generation, streaming, translation and routing info."""
        from mot.thoughts.generation import MoTDecoder

        return MoTDecoder(self)

    def get_routing_info(self, text: str) -> dict[str, Any]:
        """Deterministic routing of ``text`` (eval mode, no noise): names, weights and scores."""
        return self.decoder().get_routing_info(text)

    def generate(self, prompts: Sequence[str], params: GenerationParams | None = None,
                 mode: str = "fast", stats: FullDecodeStats | None = None) -> list[str]:
        """Continue each prompt (``MoTDecoder.generate``: ``mode`` ``"fast"`` or ``"full"``)."""
        return self.decoder().generate(prompts, params, mode, stats)

    def stream(self, prompt: str, params: GenerationParams | None = None, mode: str = "fast") -> Iterator[str]:
        """Yield the pieces of one continuation as they are produced (``MoTDecoder.stream``)."""
        return self.decoder().stream(prompt, params, mode)

    def translate(self, source_text: str, prompt_template: str = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n",
                  max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                  mode: str = "fast", seed: int | None = None) -> tuple[str, str]:
        """Translate with ``prompt_template``; returns ``(text, primary_expert_name)`` (``MoTDecoder.translate``)."""
        return self.decoder().translate(source_text, prompt_template, max_new_tokens, temperature, top_p, mode, seed)

    def as_text_generator(self, mode: str = "fast", name: str = "mot") -> Any:
        """A ``MoTTextGenerator`` (``mot.generation.TextGenerator``) over this model in one mode."""
        from mot.thoughts.generation import MoTTextGenerator

        return MoTTextGenerator(self, mode, name)

    # -- peers ---------------------------------------------------------------------------------
    def peer_experts(self, active: Sequence[int]) -> list[int]:
        """The experts whose states fill the peer slots of a sample routed to ``active`` (primary first):
        the routed peers, or with ``config.peers == "self"`` (the capacity control) the primary in every
        slot, or none with ``"adapter"`` (the adapter control).  Slot ``k`` keeps the routing weight of
        ``active[k + 1]``."""
        active = [int(e) for e in active]
        if self.config.peers == "adapter":
            return []
        if self.config.peers == "self":
            return [active[0]] * (len(active) - 1)
        return active[1:]

    def slot_experts(self, active: Sequence[int]) -> list[int]:
        """``active`` (primary first) with its peer slots filled as ``peer_experts`` says."""
        return [int(active[0]), *self.peer_experts(active)]

    def peer_input(self, q: int, expert: int, hidden: Sequence[torch.Tensor], device: Any = None) -> torch.Tensor:
        """What peer ``expert`` exposes to the interaction after the primary's stack ``q``, ``[1, T, H_e]``,
        from its per-stack states ``hidden`` (``config.peer_stack``, ``config.peer_readout``)."""
        h = hidden[-1] if self.config.peer_stack == "last" else hidden[q]
        h = h.to(device or self.device).unsqueeze(0)
        if self.config.peer_readout == "prediction":
            adapter = self.adapters[expert]
            with torch.no_grad():
                probs = torch.softmax(adapter.logits(h).float(), dim=-1)
                h = (probs @ adapter.model.get_output_embeddings().weight.float()).to(h.dtype)
        return h

    def compute_peer_states(self, expert: int, prompts: Sequence[str],
                            completions: Sequence[str] | None = None) -> list[PeerStates]:
        """Frozen per-stack states of ``expert`` on each ``prompt + completion`` (batched, no grad)."""
        adapter = self.adapters[expert]
        completions = [""] * len(prompts) if completions is None else completions
        tokens = [encode_pair(adapter.tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
        _check_nonempty(tokens, self.expert_specs[expert])
        ids, mask = left_pad([t.input_ids for t in tokens], _pad_id(adapter.tokenizer))
        width = ids.shape[1]
        per_stack: list[torch.Tensor] = []
        with torch.no_grad():
            state = adapter.new_state()
            hidden = adapter.embed(ids.to(adapter.device), mask.to(adapter.device), state)
            for start, stop in self.stacks[expert]:
                hidden = adapter.run_layers(hidden, start, stop, state)
                per_stack.append(hidden.detach())
        return [PeerStates(expert, tok, peer_ends(tok), [h[b, width - len(tok):] for h in per_stack])
                for b, tok in enumerate(tokens)]

    # -- the primary walk ----------------------------------------------------------------------
    def _walk_primary(self, primary: int, state, ids: torch.Tensor, mask: torch.Tensor | None,
                      peer_kv: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                      allowed: torch.Tensor,
                      first_stack: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      distance: torch.Tensor | None = None,
                      primary_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a chunk of primary tokens and walk every stack with interaction -> hidden ``[B, T, H]``.

        ``first_stack``: maps the embeddings to the states after the first stack (precomputed: they
        depend on the input only), which then is not run; the later stacks' layers do not read its
        KV cache, so a full-sequence pass is unchanged (the cache is unusable for decoding after).
        ``primary_weight [B]``: the primary's routing weight (the adapter control's update scale)."""
        adapter = self.adapters[primary]
        if distance is None and allowed.shape[-1] and self.config.interaction_position != "none":
            raise ValueError(f"interaction_position={self.config.interaction_position!r} needs the peer "
                             "distances (mot.thoughts.alignment.peer_distance of each visibility mask)")
        hidden = adapter.embed(ids, mask, state)
        for q, (start, stop) in enumerate(self.stacks[primary]):
            if q == 0 and first_stack is not None:
                hidden = first_stack(hidden)
            else:
                hidden = adapter.run_layers(hidden, start, stop, state)
            if self.config.peers == "adapter":
                hidden = self.interactions[q].adapt(primary, hidden, primary_weight)
            elif allowed.shape[-1]:
                keys, values = peer_kv(q)
                hidden = self.interactions[q](primary, hidden, keys, values, allowed, distance)
        return hidden

    def _primary_pass(self, primary: int, token_ids: list[torch.Tensor],
                      views: list[list[PeerView]],
                      first_states: Sequence[torch.Tensor] | None = None,
                      primary_weights: Sequence[torch.Tensor] | None = None,
                      keep: int | None = None) -> list[torch.Tensor]:
        """Full-sequence pass of a group of samples sharing ``primary`` -> per-sample logits.
        ``first_states[r]``: the primary's own states ``[T_r, H]`` after its first stack (skips it).
        ``primary_weights[r]``: row ``r``'s routing weight of its primary (read by the adapter control).
        ``keep``: logits of each row's last ``keep`` positions only (scoring: the LM head never runs on the
        rest, which matters for large vocabularies)."""
        adapter = self.adapters[primary]
        device = adapter.device
        ids, mask = left_pad(token_ids, _pad_id(adapter.tokenizer))
        n, width = ids.shape
        lengths = [sum(int(v.visible.shape[1]) for v in row) for row in views]
        total = max(lengths, default=0)
        allowed = torch.zeros(n, width, total, dtype=torch.bool)
        distance = torch.zeros(n, width, total, dtype=torch.long)
        for r, row in enumerate(views):
            offset, tp = 0, len(token_ids[r])
            for view in row:
                tk = int(view.visible.shape[1])
                allowed[r, width - tp:, offset:offset + tk] = view.visible
                distance[r, width - tp:, offset:offset + tk] = peer_distance(view.visible)
                offset += tk
        allowed, distance = allowed.to(device), distance.to(device)
        layers = self.interactions
        heads, head_dim = self.config.interaction_heads, self.shared_dim // self.config.interaction_heads

        def peer_kv(q: int) -> tuple[torch.Tensor, torch.Tensor]:
            keys_rows, values_rows = [], []
            for row in views:
                parts = [layers[q].peer_keys_values(v.expert, self.peer_input(q, v.expert, v.hidden, device),
                                                    v.weight.reshape(1))
                         for v in row]
                k = torch.cat([p[0] for p in parts], dim=2) if parts else torch.zeros(1, heads, 0, head_dim, device=device)
                v_ = torch.cat([p[1] for p in parts], dim=2) if parts else torch.zeros_like(k)
                pad = total - k.shape[2]
                keys_rows.append(F.pad(k, (0, 0, 0, pad)))
                values_rows.append(F.pad(v_, (0, 0, 0, pad)))
            return torch.cat(keys_rows), torch.cat(values_rows)

        first_stack = None
        if first_states is not None:
            def first_stack(embedded: torch.Tensor) -> torch.Tensor:
                # padding keeps its embeddings: it is never attended to and its outputs are dropped
                hidden = embedded.clone()
                for r, states in enumerate(first_states):
                    hidden[r, width - len(token_ids[r]):] = states.to(device=hidden.device, dtype=hidden.dtype)
                return hidden

        weight = None
        if primary_weights is not None:
            weight = torch.stack([torch.as_tensor(w).reshape(()) for w in primary_weights]).to(device)
        hidden = self._walk_primary(primary, adapter.new_state(), ids.to(device), mask.to(device), peer_kv, allowed,
                                    first_stack, distance, weight)
        if keep is not None:
            keep = min(keep, width)
            logits = adapter.logits(hidden[:, width - keep:])
            return [logits[r, keep - min(keep, len(token_ids[r])):] for r in range(n)]
        logits = adapter.logits(hidden)
        return [logits[r, width - len(token_ids[r]):] for r in range(n)]

    def peer_views(self, sample_prompt: str, completion: str, primary_known_ends: torch.Tensor,
                   peers: Sequence[tuple[int, torch.Tensor, PeerStates]]) -> list[PeerView]:
        """Views of a sample's peers ``(expert, weight, states)`` for a primary with ``primary_known_ends``.

        ``"stable"``: primary token ``i`` reads the peer's states on the peer's own tokenisation of the
        text up to its limit (``mot.thoughts.alignment``): a prefix of ``states`` or, where that
        tokenisation branches off the whole text's, the prefix plus the branch's tail, whose states are
        computed here once and kept in ``states.branches``.  ``"span"``: every token ending by the limit."""
        views = []
        for expert, weight, states in peers:
            tokenizer = self.adapters[expert].tokenizer
            rule = VisibilityRule(tokenizer, sample_prompt, self.config.peer_visibility)
            limits = rule.limits(primary_known_ends, completion)
            if self.config.peer_visibility == "span":
                views.append(PeerView(expert, visibility_mask(limits, states.ends), weight, states.hidden))
                continue
            cuts = sorted(set(limits.tolist()))
            full_ids = states.tokens.input_ids.tolist()
            plan = plan_cuts(full_ids, cut_token_ids(tokenizer, sample_prompt, completion, cuts))
            missing = [key for key in plan.branches if key not in states.branches]
            if missing:
                states.branches.update(self._branch_states(expert, full_ids, missing, states.hidden[0].device))
            where = {c: n for n, c in enumerate(cuts)}
            rows = [where[int(c)] for c in limits.tolist()]
            # token i reads F[:prefix_i] (visibility_mask over the states' positions 1..T) ...
            prefix = torch.tensor([plan.prefix[r] for r in rows], dtype=torch.long)
            visible = [visibility_mask(prefix, torch.arange(1, len(full_ids) + 1))]
            hidden = [list(states.hidden)]
            # ... and the tail of its branch, if any
            for b, key in enumerate(plan.branches):
                tail = states.branches[key]
                reads = torch.tensor([plan.branch[r] == b for r in rows], dtype=torch.bool)
                visible.append(reads.unsqueeze(1).expand(len(rows), tail[0].shape[0]))
                hidden.append(tail)
            views.append(PeerView(expert, torch.cat(visible, dim=1), weight,
                                  [torch.cat(parts, dim=0) for parts in zip(*hidden, strict=True)]))
        return views

    def _branch_states(self, expert: int, full_ids: list[int], branches: Sequence[tuple[int, tuple[int, ...]]],
                       device: Any) -> dict[tuple[int, tuple[int, ...]], list[torch.Tensor]]:
        """Per-stack states of each branch tail ``(k, tail)`` read after ``full_ids[:k]``.

        One pass over the whole text's tokens up to the last branch point fills the peer's cache; the tails
        then run in batches of copies of that cache (``ExpertAdapter.fork``), row ``j`` masking out the
        cached tokens from its own ``k`` on, so each tail token sees exactly ``full_ids[:k]`` and its own
        tail, at the positions it would have had.  A text has up to one branch per word (Gemma's ``'▁'``
        tails), so this is a few passes instead of one per branch.  Where the adapter cannot mask a gap
        (ALiBi over raw key indices) or a sliding window is shorter than the text, each tail is fed on its
        own after its prefix and cropped away (``_branch_states_walk``): the same states."""
        adapter = self.adapters[expert]
        branches = sorted(branches)
        if not branches:
            return {}
        last = max(k for k, _ in branches)
        window = adapter.attention_window
        longest = max(len(tail) for _, tail in branches)
        if not adapter.forks_with_gaps or (window is not None and last + longest > window):
            return self._branch_states_walk(expert, full_ids, branches, device)
        out: dict[tuple[int, tuple[int, ...]], list[torch.Tensor]] = {}
        with torch.no_grad():
            state = adapter.new_state()
            if last:
                hidden = adapter.embed(torch.tensor([full_ids[:last]], dtype=torch.long, device=adapter.device),
                                       None, state)
                for start, stop in self.stacks[expert]:
                    hidden = adapter.run_layers(hidden, start, stop, state)
            # rows per batch: keep the copied caches near _FORK_BYTES
            per_row = max(1, _cache_bytes(state.cache))
            rows_per_batch = max(1, min(len(branches), _FORK_BYTES // per_row))
            for first in range(0, len(branches), rows_per_batch):
                group = branches[first:first + rows_per_batch]
                fork = adapter.fork(state, len(group))
                if fork.attention_mask is not None:
                    for row, (k, _tail) in enumerate(group):
                        fork.attention_mask[row, k:] = 0
                width = max(len(tail) for _, tail in group)
                ids = torch.zeros((len(group), width), dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, (_k, tail) in enumerate(group):
                    ids[row, :len(tail)] = torch.tensor(tail, dtype=torch.long)
                    mask[row, :len(tail)] = 1
                hidden = adapter.embed(ids.to(adapter.device), mask.to(adapter.device), fork)
                per_stack = []
                for start, stop in self.stacks[expert]:
                    hidden = adapter.run_layers(hidden, start, stop, fork)
                    per_stack.append(hidden.detach())
                for row, key in enumerate(group):
                    out[key] = [h[row, :len(key[1])].to(device) for h in per_stack]
        return out

    def _branch_states_walk(self, expert: int, full_ids: list[int], branches: Sequence[tuple[int, tuple[int, ...]]],
                            device: Any) -> dict[tuple[int, tuple[int, ...]], list[torch.Tensor]]:
        """``_branch_states`` one tail at a time: one walk over the whole text's tokens up to the last branch
        point, each tail fed at its point and cropped away."""
        adapter = self.adapters[expert]
        out: dict[tuple[int, tuple[int, ...]], list[torch.Tensor]] = {}
        state, fed = adapter.new_state(), 0

        def feed(ids: Sequence[int]) -> list[torch.Tensor]:
            hidden = adapter.embed(torch.tensor([list(ids)], dtype=torch.long, device=adapter.device), None, state)
            per_stack = []
            for start, stop in self.stacks[expert]:
                hidden = adapter.run_layers(hidden, start, stop, state)
                per_stack.append(hidden[0].detach().to(device))
            return per_stack

        with torch.no_grad():
            for k, tail in sorted(branches):
                if k > fed:
                    feed(full_ids[fed:k])
                    fed = k
                out[(k, tail)] = feed(tail)
                adapter.crop(state, fed)
        return out

    # -- forward -------------------------------------------------------------------------------
    def forward(self, prompts: Sequence[str], completions: Sequence[str] | None = None, *,
                routing: RoutingDecision | None = None,
                peer_states: Sequence[dict[int, PeerStates]] | None = None,
                target_logits_only: bool = False) -> MoTOutput:
        """Route each prompt, run its primary with interaction over ``prompt + completion``.

        ``completions``: the target texts (training); None for prompt-only scoring.  ``routing``:
        a decision to use instead of the router's.  ``peer_states[b]``: precomputed
        ``{expert: PeerStates}`` for sample ``b`` (see ``compute_peer_states``); missing ones are
        computed here.  ``target_logits_only`` (with completions): the LM head runs only on the positions
        from the first one that predicts a completion token (``MoTOutput.logits_start``; what training
        needs: with a 262k vocabulary the head costs more than the body).  An entry for the sample's
        *primary* is used too: nothing reaches the primary
        before its first interaction, so its states after the first stack are those of
        ``compute_peer_states`` and that stack is skipped (all samples of a primary group need one).
        Use ``lm_loss(output)`` for the language-modelling loss.
        """
        prompts = list(prompts)
        has_completion = completions is not None
        completions = list(completions) if completions is not None else [""] * len(prompts)
        if len(completions) != len(prompts):
            raise UsageError(f"{len(prompts)} prompts but {len(completions)} completions")
        features = None
        if routing is None:
            features = self.features(prompts)
            routing = self.router(features)
        indices = routing.indices.tolist()
        given = peer_states or [{} for _ in prompts]
        states: dict[tuple[int, int], PeerStates] = {}
        needed: dict[int, list[int]] = defaultdict(list)
        for b, active in enumerate(indices):
            for expert in dict.fromkeys(self.peer_experts(active)):
                if expert in given[b]:
                    states[(b, expert)] = given[b][expert]
                else:
                    needed[expert].append(b)
        for expert, rows in needed.items():
            computed = self.compute_peer_states(expert, [prompts[b] for b in rows], [completions[b] for b in rows])
            for b, st in zip(rows, computed, strict=True):
                states[(b, expert)] = st

        groups: dict[int, list[int]] = defaultdict(list)
        for b, active in enumerate(indices):
            groups[active[0]].append(b)
        logits: list[torch.Tensor | None] = [None] * len(prompts)
        tokens: list[TokenSpans | None] = [None] * len(prompts)
        starts = [0] * len(prompts)
        for primary, rows in groups.items():
            tokenizer = self.adapters[primary].tokenizer
            toks = [encode_pair(tokenizer, prompts[b], completions[b]) for b in rows]
            _check_nonempty(toks, self.expert_specs[primary])
            views = []
            for b, tok in zip(rows, toks, strict=True):
                peers = [(e, routing.weights[b, k + 1], states[(b, e)])
                         for k, e in enumerate(self.peer_experts(indices[b]))]
                views.append(self.peer_views(prompts[b], completions[b], known_ends(tok), peers))
            own = [given[b].get(primary) for b in rows]
            first = None
            if all(st is not None and torch.equal(st.tokens.input_ids, tok.input_ids) for st, tok in zip(own, toks, strict=True)):
                first = [st.hidden[0] for st in own]
            weights = [routing.weights[b, 0] for b in rows]
            keep = None
            if target_logits_only and has_completion:
                keep = max(len(t) - t.num_prompt_tokens + 1 for t in toks)
            for b, tok, out in zip(rows, toks, self._primary_pass(primary, [t.input_ids for t in toks], views, first,
                                                                  weights, keep), strict=True):
                logits[b], tokens[b], starts[b] = out, tok, len(tok) - out.shape[0]

        aux = {"balance": load_balancing_loss(routing.probs, routing.indices),
               "entropy": entropy_loss(routing.probs)}
        cfg = self.config
        # The consistency term compares the outputs of two routing passes, so it lives with the
        # objective (``mot.thoughts.training.mot_objective``), not in one forward.
        total = cfg.balance_weight * aux["balance"] + cfg.entropy_weight * aux["entropy"]
        primaries = [a[0] for a in indices]
        eos = [self.adapters[p].tokenizer.eos_token_id for p in primaries]
        return MoTOutput(logits, tokens, primaries, routing, aux, eos, has_completion, total,
                         starts if any(starts) else [])


def _check_nonempty(tokens: Sequence[TokenSpans], expert: str) -> None:
    for tok in tokens:
        if tok.num_prompt_tokens == 0:
            raise UsageError(f"expert {expert!r} tokenises a prompt to no tokens (empty prompt?); give a non-empty prompt")


def lm_loss(output: MoTOutput, include_eos: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of every sample.

    Targets are the primary's tokens that belong to the completion (their spans start at or after
    the end of the prompt), plus the primary's EOS after the last token when ``include_eos`` (and
    the tokenizer has one).  Prompt tokens and padding never count.  The mean is over all target
    tokens of the batch (each token weighs the same, whatever its sample).
    """
    if not output.has_completion:
        raise UsageError("lm_loss needs completions: call forward(prompts, completions)")
    total, count = None, 0
    for b, (logits, tok, eos) in enumerate(zip(output.logits, output.tokens, output.eos_token_ids, strict=True)):
        labels = tok.input_ids[1:].to(logits.device)
        rows = torch.arange(tok.num_prompt_tokens - 1, len(tok) - 1, device=logits.device)
        if include_eos and eos is not None:
            labels = torch.cat([labels, labels.new_tensor([eos])])
            rows = torch.cat([rows, rows.new_tensor([len(tok) - 1])])
        if rows.numel() == 0:
            continue
        loss = F.cross_entropy(output.rows(b, rows).float(), labels[rows], reduction="sum")
        total = loss if total is None else total + loss
        count += int(rows.numel())
    if total is None:
        return output.logits[0].sum() * 0.0
    return total / count

