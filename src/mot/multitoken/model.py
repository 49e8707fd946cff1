"""Expert heads and their router on a frozen HF causal LM.

The backbone runs unchanged; its last hidden state ``h_t`` (after the final norm, the vector its LM head
reads) feeds ``H`` heads.  Head 0 *is* the backbone's LM head; head ``h >= 1`` is ``num_layers`` residual
blocks ``x + SiLU(W x)`` with ``W`` zero-initialised in front of the LM head, so at initialisation every head
is exactly the backbone's next-token predictor and training only has to learn the shift to offset ``h``.
A router (an MLP from :mod:`mot.routing`) scores the heads from the same ``h_t``: its raw scores are read as
independent activation logits (``sigmoid`` = probability that the head's draft is accepted) and its top-k
as the active set.

With ``head_type="layer"`` the heads ``h >= 1`` are instead the steps of one draft layer
(:mod:`mot.multitoken.drafter`) that reads the backbone's states at every position so far; decoding hands
it the settled positions through :meth:`HeadStack.observe` and a per-sequence :class:`DraftState`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mot.experts import skinny
from mot.multitoken.config import MultiTokenConfig
from mot.multitoken.drafter import DraftCache, DraftLayer
from mot.routing import build_router

# On CPU, PyTorch's own fp32 GEMMs of 2-3 rows take a slower path than 4 rows (SmolLM2's LM head: 2 rows
# ~1.9x and 3 rows ~3.8x the time of 4, one thread): short row blocks on that path are padded up to this
# many.  Verification passes use mot.experts.skinny instead, which needs no padding.
CPU_MIN_GEMM_ROWS = 4

__all__ = ["CPU_MIN_GEMM_ROWS", "DraftState", "HeadStack", "MultiTokenModel", "ResidualHead", "active_heads"]


class ResidualHead(nn.Module):
    """``num_layers`` blocks ``x + SiLU(W x + b)``; ``W`` and ``b`` start at zero (identity at init).

    With ``embed_size`` the first block also reads the embeddings of ``tokens`` tokens: ``e`` of the next
    token (``t + 1``, which the backbone has just chosen when the heads draft) and, for a chain-conditioned
    head ``h`` (Hydra-style), the drafts of heads ``1..h-1`` for ``t + 2 .. t + h``:
    ``x + SiLU(W x + U [e_1; ...; e_tokens] + b)``, ``U`` zero at init too.  Knowing those tokens is what
    lets a head reason about the token after them rather than re-guess them.
    """

    def __init__(self, hidden_size: int, num_layers: int, lm_weight: torch.Tensor | None = None,
                 embed_size: int | None = None, tokens: int = 1):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.tokens = tokens if embed_size else 0
        self.token_proj = nn.Linear(embed_size * tokens, hidden_size, bias=False) if embed_size else None
        if self.token_proj is not None:
            nn.init.zeros_(self.token_proj.weight)
        # Untied heads own a trainable copy of the LM head (Medusa-1); tied heads use the frozen one.
        self.lm_weight = nn.Parameter(lm_weight.detach().clone()) if lm_weight is not None else None

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``token_embedding``: ``[..., tokens * E]`` (the embeddings of the tokens it reads, concatenated)."""
        for i, block in enumerate(self.blocks):
            pre = block(hidden)
            if i == 0 and self.token_proj is not None:
                if token_embedding is None:
                    raise ValueError("this head reads the next token's embedding: pass the next token")
                pre = pre + self.token_proj(token_embedding)
            hidden = hidden + F.silu(pre)
        return hidden


def active_heads(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of the active heads: head 0 (the backbone, always right) plus the ``k - 1``
    highest-scoring other heads, sorted by head number."""
    num_heads = scores.shape[-1]
    k = max(1, min(k, num_heads))
    zero = torch.zeros(*scores.shape[:-1], 1, dtype=torch.long, device=scores.device)
    if k == 1:
        return zero
    others = scores[..., 1:].topk(k - 1, dim=-1).indices + 1
    return torch.cat([zero, others], dim=-1).sort(dim=-1).values


class HeadStack(nn.Module):
    """Everything trainable: ``heads`` (1..H-1) or the draft ``layer``, and ``router``.  The LM head (and, for token-conditioned
    heads, the input embeddings) ride along frozen and are not saved (non-persistent buffers): they belong
    to the backbone, which checkpoints reference by fingerprint.

    Draft vocabulary: with ``config.draft_vocab_size`` the heads ``1..H-1`` score only that many token ids
    (``vocab_ids``, chosen from the training targets by :meth:`set_draft_vocab` and saved with the heads).
    A draft outside it is never proposed; verification is unchanged, so the output is still exactly the
    backbone's, while drafting and training cost a fraction of a full-vocabulary projection.  Head 0 (the
    backbone's own LM head) always scores the whole vocabulary.
    """

    def __init__(self, config: MultiTokenConfig, lm_head: nn.Module, *, softcap: float | None = None,
                 embeddings: nn.Module | None = None, backbone_config=None):
        super().__init__()
        self.config = config
        weight = lm_head.weight
        hidden_size = weight.shape[1]
        self.hidden_size = hidden_size
        self.vocab_size = weight.shape[0]
        self.register_buffer("lm_weight", weight.detach(), persistent=False)
        bias = getattr(lm_head, "bias", None)
        self.register_buffer("lm_bias", bias.detach() if bias is not None else None, persistent=False)
        embed_size = None
        if config.token_conditioning:
            if embeddings is None or not hasattr(embeddings, "weight"):
                raise ValueError("token_conditioning needs the backbone's input embeddings")
            self.register_buffer("embed_weight", embeddings.weight.detach(), persistent=False)
            embed_size = embeddings.weight.shape[1]
        else:
            self.register_buffer("embed_weight", None, persistent=False)
        self.softcap = softcap
        draft_size = config.draft_vocab_size
        self.subset = draft_size is not None and draft_size < self.vocab_size
        # token ids the heads score (arange until set_draft_vocab chooses them)
        self.register_buffer("vocab_ids", torch.arange(draft_size if self.subset else 0, dtype=torch.long))
        rows = draft_size if self.subset else self.vocab_size
        self.layer: DraftLayer | None = None
        if config.head_type == "layer":  # heads 1..H-1 are the steps of one draft layer (EAGLE-style)
            _layer_shape(config, hidden_size, backbone_config)
            self.layer = DraftLayer(hidden_size, embed_size, num_heads=config.layer_heads, ffn_size=config.layer_ffn)
        self.heads = nn.ModuleList(
            ResidualHead(hidden_size, config.head_layers, weight[:rows] if config.untie_heads else None,
                         embed_size=embed_size, tokens=head if config.chain_conditioning else 1)
            for head in range(1, config.num_heads if self.layer is None else 1)
        )
        self.router = build_router(
            "mlp", hidden_size, config.num_heads, config.k_max,
            hidden_dim=config.router_hidden or hidden_size, num_layers=config.router_layers,
            dropout=config.router_dropout,
        )
        self._shared: tuple | None = None  # (key, weight, bias, index) for the draft vocabulary

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def head_parameters(self) -> list[nn.Parameter]:
        """The drafting parameters (everything but the router)."""
        return [*self.heads.parameters(), *(self.layer.parameters() if self.layer is not None else ())]

    # ------------------------------------------------------------------------------ draft vocabulary

    @torch.no_grad()
    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Make ``token_ids`` (``draft_vocab_size`` distinct ids) the heads' vocabulary; untied heads copy
        those rows of the LM head."""
        if not self.subset:
            return
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if token_ids.numel() != self.vocab_ids.numel() or token_ids.unique().numel() != token_ids.numel():
            raise ValueError(f"the draft vocabulary needs {self.vocab_ids.numel()} distinct token ids")
        self.vocab_ids.copy_(token_ids.to(self.vocab_ids.device))
        for head in self.heads:
            if head.lm_weight is not None:
                head.lm_weight.copy_(self.lm_weight[self.vocab_ids].to(head.lm_weight))

    def _draft_vocab(self):
        """``(weight [Vd, D], bias, index [V] token id -> row or -1)`` of the draft vocabulary, cached."""
        key = (self.vocab_ids._version, self.vocab_ids.data_ptr(), self.lm_weight.data_ptr(), self.lm_weight.dtype,
               self.lm_weight.device)
        if self._shared is None or self._shared[0] != key:
            ids = self.vocab_ids
            index = torch.full((self.vocab_size,), -1, dtype=torch.long, device=ids.device)
            index[ids] = torch.arange(ids.numel(), device=ids.device)
            bias = None if self.lm_bias is None else self.lm_bias[ids]
            self._shared = (key, self.lm_weight[ids], bias, index)
        return self._shared[1:]

    def token_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """Token ids of rows of a head's logits (heads 1..H-1)."""
        return self.vocab_ids[rows] if self.subset else rows

    def vocab_rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Rows of a head's logits for ``token_ids``; ``-100`` where a token is outside the draft vocabulary
        (and where the input was already ``-100``)."""
        if not self.subset:
            return token_ids
        index = self._draft_vocab()[2]
        rows = index[token_ids.clamp_min(0)]
        return torch.where((token_ids >= 0) & (rows >= 0), rows, torch.full_like(rows, -100))

    # ------------------------------------------------------------------------------------- forward

    def _project(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = skinny.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _output(self, head: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        own = self.heads[head - 1].lm_weight if self.layer is None else None
        if self.subset:
            weight, bias, _ = self._draft_vocab()
            return (own if own is not None else weight), bias
        return (own if own is not None else self.lm_weight), self.lm_bias

    def tokens_read(self, head: int) -> int:
        """How many of the tokens ``t + 1, t + 2, ...`` head ``head`` reads (0: none, 1: the next token)."""
        if self.layer is not None:  # step h of the draft layer has read t + 1 .. t + h
            return head
        return self.heads[head - 1].tokens

    def head_state(self, hidden: torch.Tensor, head: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Head ``head``'s state (before its output projection) for hidden states ``[..., D]``.

        ``tokens``: the tokens at ``t + 1, t + 2, ...`` (``[...]`` for the next token alone, or ``[..., n]``);
        a head reads the first :meth:`tokens_read` of them.
        """
        if self.layer is not None:
            raise ValueError("draft-layer heads read the whole sequence: draft through new_draft_state()/observe()")
        hidden = hidden.to(self.lm_weight.dtype)
        embedding = None
        need = self.tokens_read(head)
        if need:
            if tokens is None:
                raise ValueError("these heads read the next token: pass next_token")
            tokens = torch.as_tensor(tokens, device=hidden.device)
            if tokens.dim() < hidden.dim():
                tokens = tokens.unsqueeze(-1)
            if tokens.shape[-1] < need:
                raise ValueError(f"head {head} reads {need} tokens (t+1..t+{need}), got {tokens.shape[-1]}")
            embedding = F.embedding(tokens[..., :need], self.embed_weight).to(hidden.dtype).flatten(-2)
        return self.heads[head - 1](hidden, embedding)

    def head_logits(self, hidden: torch.Tensor, head: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``head`` for the token at offset ``head`` after the next one.  Head 0 is the backbone's
        LM head over the whole vocabulary; heads ``h >= 1`` score their vocabulary (see :meth:`token_ids`).
        ``tokens`` (the token at ``t + 1``, shape ``hidden.shape[:-1]``, or the tokens ``t + 1 ..``, shape
        ``[..., n]``) are needed by token-conditioned heads (see :meth:`head_state`)."""
        if head == 0:
            hidden = hidden.to(self.lm_weight.dtype)
            return self._project(hidden, self.lm_weight, self.lm_bias)
        weight, bias = self._output(head)
        return self._project(self.head_state(hidden, head, tokens), weight, bias)

    def router_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` raw router scores (activation logits) for hidden states ``[..., D]``."""
        flat = hidden.reshape(-1, hidden.shape[-1]).to(self.lm_weight.dtype)
        return self.router(flat).logits.reshape(*hidden.shape[:-1], self.num_heads)

    @torch.no_grad()
    def draft_chain(self, hidden: torch.Tensor, k: int | None = None, limit: int | None = None) -> list[int]:
        """Heads 1, 2, ... that draft at this step for one hidden state ``[D]``: the leading run of active
        heads whose activation probability reaches ``draft_threshold``, at most ``limit`` of them."""
        k = self.config.k_max if k is None else min(k, self.config.k_max)
        scores = self.router_scores(hidden[None])[0]
        active = set(active_heads(scores[None], k)[0].tolist())
        probs = torch.sigmoid(scores.float()).tolist()
        chain: list[int] = []
        for head in range(1, self.num_heads):
            if head not in active or probs[head] < self.config.draft_threshold:
                break
            if limit is not None and len(chain) >= limit:
                break
            chain.append(head)
        return chain

    @torch.no_grad()
    def draft_logits(self, hidden: torch.Tensor, chain: list[int], next_token: int | None = None) -> torch.Tensor:
        """``[len(chain), V_heads]`` logits of the heads in ``chain`` for one hidden state ``[D]``: one output
        projection for all of them when they share the LM head.  Heads that read earlier drafts
        (``chain_conditioning``) need them: use :meth:`draft_tokens`."""
        if any(self.tokens_read(head) > 1 for head in chain):
            raise ValueError("chain-conditioned heads draft one after another: use draft_tokens")
        token = None if next_token is None else torch.tensor(int(next_token))
        states = [self.head_state(hidden, head, token) for head in chain]
        if self.config.untie_heads:
            return torch.stack([self._project(s, *self._output(h)) for s, h in zip(states, chain, strict=True)])
        weight, bias = self._output(chain[0])
        stacked = torch.stack(states)
        if stacked.device.type == "cpu" and not skinny.active() and 1 < len(chain) < CPU_MIN_GEMM_ROWS:
            stacked = torch.cat([stacked, stacked.new_zeros(CPU_MIN_GEMM_ROWS - len(chain), stacked.shape[1])])
        return self._project(stacked, weight, bias)[: len(chain)]

    # --------------------------------------------------------------------------- draft layer

    def new_draft_state(self) -> DraftState | None:
        """Per-sequence drafting state for draft-layer heads (None for residual heads, which need none)."""
        return DraftState() if self.layer is not None else None

    @torch.no_grad()
    def observe(self, state: DraftState | None, hidden: torch.Tensor, tokens: list[int] | torch.Tensor) -> None:
        """Feed verified positions to the draft layer: the backbone's states ``[m, D]`` there and the token
        after each (``[m]``; the last is the backbone's next token).  No-op for residual heads."""
        if state is None or self.layer is None:
            return
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=hidden.device)
        if hidden.shape[0] != tokens.shape[0] or hidden.shape[0] == 0:
            raise ValueError(f"observe: {hidden.shape[0]} states for {tokens.shape[0]} tokens")
        state.output = self.layer.extend(state.cache, hidden.to(self.lm_weight.dtype),
                                         F.embedding(tokens, self.embed_weight))

    @torch.no_grad()
    def _layer_drafts(self, state: DraftState, chain: list[int], pick: Callable[[torch.Tensor], int]) -> list[int]:
        if state.output is None:
            raise ValueError("the draft layer has seen no position yet: observe() the prompt first")
        weight, bias = self._output(1)
        output, drafted, tokens = state.output, [], []
        for step, _head in enumerate(chain):
            if step:
                token = torch.tensor(tokens[-1], device=output.device)
                output = self.layer.step(state.cache, output, F.embedding(token, self.embed_weight), drafted)
            logits = self._project(output, weight, bias)
            tokens.append(int(self.token_ids(torch.tensor(pick(logits), device=logits.device))))
        return tokens

    # ------------------------------------------------------------------------------- drafting

    @torch.no_grad()
    def draft_tokens(self, hidden: torch.Tensor, chain: list[int], next_token: int | None = None,
                     pick: Callable[[torch.Tensor], int] | None = None, state: DraftState | None = None) -> list[int]:
        """The draft of each head in ``chain`` for one hidden state ``[D]``: ``pick`` (default: argmax) of its
        logits, as a token id.  Chain-conditioned heads run one after another, each reading the drafts
        before it; the others share one output projection.  Draft-layer heads draft from ``state`` (which
        has observed every position up to ``next_token``); ``hidden`` is not read."""
        if not chain:
            return []
        pick = pick or (lambda logits: int(logits.argmax(-1)))
        if self.layer is not None:
            if state is None:
                raise ValueError("draft-layer heads draft from a DraftState: pass state=")
            return self._layer_drafts(state, chain, pick)
        if all(self.tokens_read(head) <= 1 for head in chain):
            rows = self.draft_logits(hidden, chain, next_token)
            return self.token_ids(torch.tensor([pick(row) for row in rows], device=rows.device)).tolist()
        tokens = [int(next_token)] if next_token is not None else []
        for head in chain:
            logits = self.head_logits(hidden, head, torch.tensor(tokens, device=hidden.device))
            tokens.append(int(self.token_ids(torch.tensor(pick(logits), device=logits.device))))
        return tokens[1:]

    @torch.no_grad()
    def draft_tree(self, hidden: torch.Tensor, chain: list[int], next_token: int, *, width: int,
                   budget: int, state: DraftState | None = None) -> list[tuple[int, int]]:
        """A tree of greedy drafts for one hidden state ``[D]``: up to ``budget`` nodes, as ``(parent, token)``
        in depth-first order, ``parent`` an index into ``[next_token, *nodes]`` (0: the next token itself).

        Depth ``d`` is scored by head ``chain[d - 1]``, which reads the path to its parent (chain
        conditioning), so each depth is one batched head call over the ``width`` best paths so far.  A node's
        score is the product of its path's head probabilities; the ``budget`` best nodes form the tree (a
        child never outscores its parent, so every kept node keeps its parent).  Children are listed best
        first, so the heads' top-1 chain is nodes ``0 .. len(chain) - 1``: rows ``1 ..`` of the fed block.
        Draft-layer heads (``state``) step the layer once per frontier path instead.
        """
        if not chain or budget <= 0:
            return []
        if self.layer is not None and (state is None or state.output is None):
            raise ValueError("draft-layer heads draft from a DraftState that has observed the prompt: pass state=")
        # each candidate: (log score, depth, parent candidate or -1 for the root, token, path tokens)
        candidates: list[tuple[float, int, int, int, list[int]]] = []
        frontier = [(0.0, -1, [int(next_token)])]
        # draft layer: candidate -> (its step output, the step keys/values [1, heads, 1, head_dim] of its path)
        steps = {-1: (state.output, [])} if self.layer is not None else {}

        def layer_outputs(frontier_candidates: list[int]) -> torch.Tensor:
            """Step outputs ``[w, D]`` of the frontier: one batched layer step from their parents."""
            if frontier_candidates == [-1]:
                return state.output[None]
            parents = [steps[candidates[c][2]] for c in frontier_candidates]
            drafted = [(torch.cat([p[1][j][0] for p in parents]), torch.cat([p[1][j][1] for p in parents]))
                       for j in range(len(parents[0][1]))]
            tokens = torch.tensor([candidates[c][3] for c in frontier_candidates], device=state.output.device)
            outputs = self.layer.step(state.cache, torch.stack([p[0] for p in parents]),
                                      F.embedding(tokens, self.embed_weight), drafted)
            for row, c in enumerate(frontier_candidates):
                steps[c] = (outputs[row], [(k[row:row + 1], v[row:row + 1]) for k, v in drafted])
            return outputs

        for depth, head in enumerate(chain, start=1):
            if self.layer is not None:
                outputs = layer_outputs([candidate for _, candidate, _ in frontier])
                logits = self._project(outputs, *self._output(head))
            else:
                paths = torch.tensor([path for _, _, path in frontier], device=hidden.device)
                logits = self.head_logits(hidden.expand(len(frontier), -1), head, paths)
            top = torch.log_softmax(logits.float(), -1).topk(min(width, logits.shape[-1]), dim=-1)
            tokens = self.token_ids(top.indices).tolist()
            scored = sorted(((score + value, parent, token)
                             for (score, parent, _), values, row in zip(frontier, top.values.tolist(), tokens,
                                                                          strict=True)
                             for value, token in zip(values, row, strict=True)), key=lambda c: -c[0])[:width]
            frontier = []
            for score, parent, token in scored:
                path = (candidates[parent][4] if parent >= 0 else [int(next_token)]) + [token]
                candidates.append((score, depth, parent, token, path))
                frontier.append((score, len(candidates) - 1, path))
        # log probabilities are <= 0, so a child never outscores its parent; ties go to the shallower node:
        # the best ``budget`` candidates always include every kept node's parent
        kept = sorted(range(len(candidates)), key=lambda i: (-candidates[i][0], candidates[i][1]))[:budget]
        children: dict[int, list[int]] = {}
        for i in sorted(kept, key=lambda i: -candidates[i][0]):
            children.setdefault(candidates[i][2], []).append(i)
        nodes: list[tuple[int, int]] = []

        def visit(candidate: int, row: int) -> None:
            for child in children.get(candidate, []):
                nodes.append((row, candidates[child][3]))
                visit(child, len(nodes))

        visit(-1, 0)
        return nodes


class DraftState:
    """What the draft layer knows of one sequence: its key/value cache and step 1's latest output."""

    def __init__(self):
        self.cache = DraftCache()
        self.output: torch.Tensor | None = None


def _layer_shape(config: MultiTokenConfig, hidden_size: int, backbone_config) -> None:
    """Fill in the draft layer's heads and width from the backbone's config (written back, so a checkpoint's
    config alone rebuilds the same layer)."""
    if config.layer_heads is None:
        heads = getattr(backbone_config, "num_attention_heads", None)
        ok = heads and hidden_size % heads == 0 and (hidden_size // heads) % 2 == 0
        config.layer_heads = int(heads) if ok else max(1, hidden_size // 64)
    if config.layer_ffn is None:
        config.layer_ffn = int(getattr(backbone_config, "intermediate_size", None) or 4 * hidden_size)


class MultiTokenModel:
    """A frozen backbone (on ``backbone_device``) plus a :class:`HeadStack` (on ``heads_device``)."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        config: MultiTokenConfig,
        heads: HeadStack | None = None,
        *,
        heads_device: str | torch.device | None = None,
        backbone_spec: str | None = None,
    ):
        backbone.eval()
        backbone.requires_grad_(False)
        skinny.install(backbone)  # inert until a pass asks for it (backbone_step(skinny_rows=True))
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.backbone_spec = backbone_spec
        self.quantization: str | None = None
        self.backbone_device = next(backbone.parameters()).device
        self.heads_device = torch.device(heads_device) if heads_device is not None else self.backbone_device
        lm_head = backbone.get_output_embeddings()
        if lm_head is None or not hasattr(lm_head, "weight"):
            raise ValueError(f"{type(backbone).__name__} has no output embedding (LM head) to build heads on")
        if heads is None:
            heads = HeadStack(config, lm_head, softcap=getattr(backbone.config, "final_logit_softcapping", None),
                              embeddings=backbone.get_input_embeddings(), backbone_config=backbone.config)
        self.heads = heads.to(self.heads_device)
        skinny.install(self.heads)  # drafting (few rows) runs under skinny_rows too; training never does
        if self.heads.lm_weight.dtype != torch.float32:
            # half-precision or quantized backbones: the heads (fp32) work on a float32 copy of the LM head
            self.heads.lm_weight = self.heads.lm_weight.float()
            if self.heads.lm_bias is not None:
                self.heads.lm_bias = self.heads.lm_bias.float()
        self.heads.eval()

    @property
    def eos_token_ids(self) -> set[int]:
        eos = getattr(getattr(self.backbone, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list | tuple) else {int(eos)}

    def encode(self, prompt: str) -> torch.Tensor:
        return self.tokenizer(prompt, return_tensors="pt").input_ids

    def backbone_step(self, input_ids: torch.Tensor, cache=None, *, attention_mask: torch.Tensor | None = None,
                      use_cache: bool = True, skinny_rows: bool = False, last_only: bool = False,
                      position_ids: torch.Tensor | None = None, all_hidden: bool = False):
        """One backbone pass: ``(hidden [B, T, D] on the heads device, logits [B, T, V], cache)``.

        ``skinny_rows``: linear layers fed a few rows take :mod:`mot.experts.skinny`'s path (CPU verification
        passes).  ``last_only``: ``hidden`` and ``logits`` only for the last position (``T`` = 1), so a
        prefill does not project the whole prompt onto the vocabulary (``all_hidden``: ``hidden`` still for
        every position, which a draft layer reads).  A 4D ``attention_mask`` (with
        ``position_ids``) reaches the attention layers as it is: tree verification.

        ``hidden`` is the final-normed state the LM head reads (``hidden_states[-1]``); ``logits`` are the
        backbone's own, so verification compares against exactly what ``generate()`` would pick.
        """
        extra = {"logits_to_keep": 1} if last_only and self._keeps_logits else {}
        if position_ids is not None:
            extra["position_ids"] = position_ids.to(self.backbone_device)
        with torch.no_grad(), skinny.skinny_rows(skinny_rows):
            out = self.backbone(
                input_ids=input_ids.to(self.backbone_device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.backbone_device),
                past_key_values=cache, use_cache=use_cache, output_hidden_states=True, return_dict=True, **extra,
            )
        hidden, logits = out.hidden_states[-1], out.logits
        if last_only:
            hidden, logits = (hidden if all_hidden else hidden[:, -1:]), logits[:, -1:]
        return hidden.to(self.heads_device), logits, out.past_key_values

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        """Whether the backbone's forward takes ``logits_to_keep`` (HF causal LMs do since transformers 4.50)."""
        return "logits_to_keep" in inspect.signature(self.backbone.forward).parameters
