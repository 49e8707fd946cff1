"""moellama: a LLaMA-style Mixture-of-Experts language model, in one file.

Top to bottom: grouped-query attention, the router, the SwiGLU experts (stacked; sorted by expert and
dispatched per contiguous segment), the MoE block, the decoder block, the model and its KV cache; RMSNorm,
rotary embeddings and the dense SwiGLU come from ``mot.layers``.  ``Block.forward`` is two pre-norm residual lines.

Dispatch (``Experts.forward``): the N*K token->expert assignments are sorted by expert, so each
expert's tokens form one contiguous segment.  Two backends (``_experts_backend``):

* CUDA: both SwiGLU matmuls run as one ``torch._grouped_mm`` over those segments.  Segment ends
  come from a ``searchsorted`` over the sorted expert ids and stay on the device: no host sync, no
  per-expert Python loop, no padding.
* CPU (and anything else): ``SortedExpertsMM``, one autograd node with a hand-written backward.  The
  segment lengths are read back once (a host sync is free on the CPU), each expert runs one ``mm``
  for gate|up and one for down on its contiguous slice, written into preallocated buffers, and the
  backward reuses the sort permutation and writes straight into the gradient buffers.

Measured (bench/moellama_moe_layer.py, 8 experts top-2, 4k tokens, d=512, f=1024, fwd+bwd):
H100 bf16, experts alone: grouped 1.46 ms, padded bmm (capacity = max count, one ``.item()`` sync)
1.61 ms, per-expert loop 4.35 ms.  Padding also costs FLOPs when routing is unbalanced.
CPU fp32, 1 thread, same run: MoE layer (router + experts) 1.09 s vs dense SwiGLU with the same
active parameters 1.00 s (1.09x; target <= 1.3); experts alone: sorted mm 1.09 s, grouped 1.17 s,
padded bmm 1.23 s, per-expert autograd loop 1.24 s.  The per-expert matmuls run at ~80% of one big
matmul's rate at these sizes; the rest of the gap is the router and the gather/scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mot.layers import RMSNorm, SwiGLU, apply_rope, rope_cos_sin  # noqa: F401  (shared building blocks)
from mot.moellama.config import ModelConfig
from mot.routing.decision import RoutingDecision
from mot.routing.losses import load_balancing_loss, router_z_loss  # noqa: F401  (re-exported; see aux_loss)

# --------------------------------------------------------------------------- building blocks


class KVCache:
    """Keys and values of every layer seen so far.  Same ``update``/``get_seq_length`` interface as
    transformers' ``DynamicCache``, so either can be passed to ``MoeLlama.forward``."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], k), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], v), dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE; one fused qkv projection."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.out = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache=None, mask=None):
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim).transpose(1, 2)
        # queries and keys rotated together: one RoPE over H + H_kv heads instead of two
        q, k = apply_rope(qkv[:, : self.n_heads + self.n_kv], cos, sin).split([self.n_heads, self.n_kv], dim=1)
        v = qkv[:, self.n_heads + self.n_kv :]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # mask None means plain causal with queries and keys aligned (no cache prefix, no padding);
        # otherwise it is a boolean [B, 1, T, S] "may attend" mask built once by MoeLlama.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv != self.n_heads,
        )
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


# --------------------------------------------------------------------------- mixture of experts


class MoERouter(nn.Module):
    """Linear gate -> (noise, training only) -> softmax over all experts -> top-k -> renormalise.

    The same maths as Mixtral's router, so an exported model routes identically.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.noise_std = cfg.top_k, cfg.router_noise_std
        self.gate = nn.Linear(cfg.dim, cfg.num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RoutingDecision:
        logits = self.gate(x).float()  # [N, E]; fp32: the softmax and the z-loss need the range
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.softmax(dim=-1)
        top_probs, indices = probs.topk(self.top_k, dim=-1)  # sorted, descending
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)
        return RoutingDecision(logits=logits, probs=probs, indices=indices, weights=weights, primary=indices[:, 0])


class Experts(nn.Module):
    """``num_experts`` SwiGLU FFNs stored stacked: gate_up [E, d, 2f] (gate | up), down [E, f, d]."""

    def __init__(self, num_experts: int, dim: int, ffn_dim: int):
        super().__init__()
        self.num_experts = num_experts
        self.gate_up = nn.Parameter(torch.empty(num_experts, dim, 2 * ffn_dim))
        self.down = nn.Parameter(torch.empty(num_experts, ffn_dim, dim))

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, d]; indices, weights [N, K] -> sum_k weights[:, k] * expert_{indices[:, k]}(x)."""
        backend = _experts_backend(x)
        gate_up, down, weights = self.gate_up.to(x.dtype), self.down.to(x.dtype), weights.to(x.dtype)
        if backend == "sorted_mm":
            return SortedExpertsMM.apply(x, gate_up, down, weights, indices)
        N, K = indices.shape
        flat_expert = indices.reshape(-1)
        sorted_expert, order = flat_expert.sort(stable=True)  # assignments grouped by expert
        xs = x[order // K]  # the token of each sorted assignment
        if backend == "grouped_mm":
            # segment ends by binary search on the device (bincount would read its max back to the host)
            experts = torch.arange(1, self.num_experts + 1, device=x.device, dtype=sorted_expert.dtype)
            ends = torch.searchsorted(sorted_expert, experts, right=False).to(torch.int32)
            gate, up = torch._grouped_mm(xs, gate_up, offs=ends).chunk(2, dim=-1)
            ys = torch._grouped_mm(F.silu(gate) * up, down, offs=ends)
        else:  # "loop": plain autograd, one Python iteration per expert (a reference)
            counts = torch.bincount(flat_expert, minlength=self.num_experts).tolist()  # one host sync
            ys = torch.cat([_one_expert(gate_up[e], down[e], seg) for e, seg in enumerate(xs.split(counts))])
        # unsort (each token owns exactly K rows) and mix: no atomics, deterministic
        unsorted = torch.empty_like(ys).index_copy_(0, order, ys).view(N, K, -1)
        return torch.einsum("nkd,nk->nd", unsorted, weights)


def _one_expert(gate_up: torch.Tensor, down: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    gate, up = (x @ gate_up).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ down


def _experts_backend(x: torch.Tensor) -> str:
    """``grouped_mm`` on CUDA (no host sync); ``sorted_mm`` elsewhere: on the CPU a host sync is free
    and plain per-expert ``mm`` beats ``_grouped_mm``; on other devices it costs one sync per layer."""
    if x.device.type == "cuda" and hasattr(torch, "_grouped_mm"):
        return "grouped_mm"
    return "sorted_mm"


class SortedExpertsMM(torch.autograd.Function):
    """The routed experts as one autograd node with a hand-written backward (the CPU path).

    Forward: sort the N*K assignments by expert once, gather their tokens into one contiguous buffer,
    run one ``mm`` per expert on its contiguous segment (gate and up fused: [n, d] @ [d, 2f]), SwiGLU
    over the whole buffer at once, one ``mm`` per expert for down, then unsort and mix with the
    routing weights.  Backward reuses the permutation and the segment bounds and writes every matmul
    straight into preallocated gradient buffers: no per-expert autograd nodes, no full-size zero
    gradient per ``param[e]`` slice, no ``cat``.  The segment lengths are read back to the host once
    per call (free on the CPU).  ``indices`` gets no gradient (it is discrete).
    """

    @staticmethod
    def forward(ctx, x, gate_up, down, weights, indices):
        N, K = indices.shape
        E, _, f2 = gate_up.shape
        f = f2 // 2
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)
        inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=order.device))
        bounds = _segment_bounds(torch.bincount(flat, minlength=E).tolist())
        xs = x.index_select(0, order // K)  # sorted assignment i is token order[i] // K
        h = x.new_empty(N * K, f2)
        for e, a, b in bounds:
            torch.mm(xs[a:b], gate_up[e], out=h[a:b])
        silu_gate = F.silu(h[:, :f])
        act = silu_gate * h[:, f:]
        ys = x.new_empty(N * K, down.shape[-1])
        for e, a, b in bounds:
            torch.mm(act[a:b], down[e], out=ys[a:b])
        ys_tokens = ys.index_select(0, inverse).view(N, K, -1)  # back in (token, k) order
        out = ys_tokens[:, 0] * weights[:, :1]  # mix: K fused multiply-adds (a batched [1, K] @ [K, d] is 20x slower)
        for k in range(1, K):
            out.addcmul_(ys_tokens[:, k], weights[:, k:k + 1])
        ctx.save_for_backward(xs, h, silu_gate, act, ys_tokens, gate_up, down, weights, order, inverse)
        ctx.bounds, ctx.K = bounds, K
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xs, h, silu_gate, act, ys_tokens, gate_up, down, weights, order, inverse = ctx.saved_tensors
        bounds, K = ctx.bounds, ctx.K
        need_x, need_gu, need_down, need_w = ctx.needs_input_grad[:4]
        N, f = grad_out.shape[0], act.shape[-1]
        grad_out = grad_out.contiguous()
        grad_w = (ys_tokens * grad_out.unsqueeze(1)).sum(-1) if need_w else None  # [N, K]
        # d out / d ys for each sorted assignment: its routing weight times its token's gradient
        g_tokens = (grad_out.unsqueeze(1) * weights.unsqueeze(-1)).view(N * K, -1)
        g_ys = g_tokens.index_select(0, order)
        grad_down = _zeros_where_empty(down, bounds) if need_down else None
        g_act = torch.empty_like(act)
        for e, a, b in bounds:
            if need_down:
                torch.mm(act[a:b].t(), g_ys[a:b], out=grad_down[e])
            torch.mm(g_ys[a:b], down[e].t(), out=g_act[a:b])
        gate, up = h[:, :f], h[:, f:]
        g_h = torch.empty_like(h)
        torch.mul(g_act, silu_gate, out=g_h[:, f:])
        torch.ops.aten.silu_backward.grad_input(g_act * up, gate, grad_input=g_h[:, :f])
        grad_gate_up = _zeros_where_empty(gate_up, bounds) if need_gu else None
        g_xs = torch.empty_like(xs) if need_x else None
        for e, a, b in bounds:
            if need_gu:
                torch.mm(xs[a:b].t(), g_h[a:b], out=grad_gate_up[e])
            if need_x:
                torch.mm(g_h[a:b], gate_up[e].t(), out=g_xs[a:b])
        grad_x = torch.zeros_like(grad_out).index_add_(0, order // K, g_xs) if need_x else None
        return grad_x, grad_gate_up, grad_down, grad_w, None


def _segment_bounds(counts: list[int]) -> list[tuple[int, int, int]]:
    """(expert, start, end) of each non-empty segment of the expert-sorted assignments."""
    bounds, start = [], 0
    for e, n in enumerate(counts):
        if n:
            bounds.append((e, start, start + n))
        start += n
    return bounds


def _zeros_where_empty(param: torch.Tensor, bounds) -> torch.Tensor:
    """An uninitialised gradient buffer like ``param`` [E, ...], zeroed for the experts with no tokens."""
    grad = torch.empty_like(param)
    used = {e for e, _, _ in bounds}
    for e in range(param.shape[0]):
        if e not in used:
            grad[e].zero_()
    return grad


class MoE(nn.Module):
    """Routed experts plus, optionally, one shared expert added ungated (outside the softmax).

    The routed mixture is scaled by ``cfg.route_scale`` (default ``top_k``; DeepSeek-V3's
    ``routed_scaling_factor``).  The router's weights sum to one, so unscaled the branch is an
    *average* of k experts, about 1/k the size of a dense SwiGLU of the same active width, which sums
    its k*f hidden units; with the scale, k experts given equal weights are exactly that dense FFN.
    Unscaled, the MoE lost to the equal-active dense model by 0.15 nats in bench/moellama_quality.py
    at 0.9M and 0.07 at 3.7M tokens; scaled, it is level at 0.9M and ahead by 0.06 at 3.7M.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.route_scale = cfg.route_scale
        self.router = MoERouter(cfg)
        self.experts = Experts(cfg.num_experts, cfg.dim, cfg.ffn_dim)
        self.shared = SwiGLU(cfg.dim, cfg.ffn_dim) if cfg.shared_expert else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingDecision]:
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        decision = self.router(flat)
        y = self.experts(flat, decision.indices, decision.weights * self.route_scale)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view(B, T, D), decision


# --------------------------------------------------------------------------- the model


class Block(nn.Module):
    """Pre-norm decoder block: attention then MoE, each a residual branch."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.moe_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.moe = MoE(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h, cos, sin, cache=None, mask=None) -> tuple[torch.Tensor, RoutingDecision]:
        h = h + self.dropout(self.attn(self.attn_norm(h), cos, sin, cache, mask))
        moe_out, decision = self.moe(self.moe_norm(h))
        return h + self.dropout(moe_out), decision


@dataclass
class MoeLlamaOutput:
    logits: torch.Tensor  # [B, T, V]
    loss: torch.Tensor | None = None  # cross-entropy + aux_loss, when targets are given
    aux_loss: torch.Tensor | None = None  # weighted load-balancing + z-loss, summed over layers
    lm_loss: torch.Tensor | None = None
    cache: object | None = None
    decisions: list[RoutingDecision] | None = None  # one per layer, over the B*T flattened tokens


class MoeLlama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # one matrix to read and write tokens
        self.apply(lambda m: init_module(m, cfg))

    def num_parameters(self, active: bool = False) -> int:
        """All parameters, or those one token uses (top_k of num_experts routed experts)."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            per_expert = sum(p[0].numel() for layer in self.layers for p in layer.moe.experts.parameters())
            total -= per_expert * (self.cfg.num_experts - self.cfg.top_k)
        return total

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache=None,
        with_aux_loss: bool | None = None,
    ) -> MoeLlamaOutput:
        """input_ids [B, T]; targets [B, T] (-100: ignored); attention_mask [B, S] over cache + input
        (1: real token, 0: padding); positions [B, T] (default: cache length + arange(T)).
        ``with_aux_loss`` None: the router losses are computed when training or given targets (decoding
        skips them: they cost a sixth of a cached step)."""
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if int(past) + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds model.max_seq_len = {self.cfg.max_seq_len}")
        mask = self._attention_mask(attention_mask, B, T, past, input_ids.device)
        h = self.dropout(self.embed(input_ids))
        cos, sin = self.rotary(positions, h.dtype)
        decisions = []
        for layer in self.layers:
            h, decision = layer(h, cos, sin, cache, mask)
            decisions.append(decision)
        logits = self.lm_head(self.norm(h))

        token_mask = attention_mask[:, -T:] if attention_mask is not None else None
        if with_aux_loss is None:
            with_aux_loss = self.training or targets is not None
        aux = self.aux_loss(decisions, token_mask) if with_aux_loss else None
        out = MoeLlamaOutput(logits=logits, aux_loss=aux, cache=cache, decisions=decisions)
        if targets is not None:
            out.lm_loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
            out.loss = out.lm_loss if aux is None else out.lm_loss + aux
        return out

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32):
        """cos, sin for ``positions`` [B, T]; with them any block runs alone: ``block(h, cos, sin, cache, mask)``."""
        return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, dtype)

    def aux_loss(self, decisions: list[RoutingDecision], token_mask: torch.Tensor | None) -> torch.Tensor:
        """Weighted load-balancing + router z-loss, summed over layers; padding tokens excluded.

        The same values as ``load_balancing_loss`` and ``router_z_loss`` (mot.routing.losses) layer by
        layer, computed for all layers at once on the stacked [L, N, E] router outputs: a handful of
        ops per step instead of ~15 per layer (a few percent of a small model's training step)."""
        c = self.cfg
        L, (N, E), K = len(decisions), decisions[0].probs.shape, decisions[0].indices.shape[-1]
        total = decisions[0].logits.new_zeros(())
        m = None if token_mask is None else token_mask.reshape(-1).to(total.dtype)
        count = total.new_tensor(float(N)) if m is None else m.sum().clamp_min(1.0)
        if c.load_balancing_loss_coef:
            probs = torch.stack([d.probs for d in decisions])  # [L, N, E]
            slots = torch.stack([d.indices for d in decisions]) + E * torch.arange(L, device=probs.device)[:, None, None]
            per_slot = probs.new_ones(L * N * K) if m is None else m[:, None].expand(N, K).repeat(L, 1, 1).reshape(-1)
            # assignments per (layer, expert): index_add_, not bincount (no host sync on CUDA)
            fraction = probs.new_zeros(L * E).index_add_(0, slots.reshape(-1), per_slot).view(L, E)
            mean_prob = (probs.sum(1) if m is None else torch.einsum("lne,n->le", probs, m)) / count
            balance = E * (fraction * mean_prob).sum() / (count * K)
            total = total + c.load_balancing_loss_coef * balance
        if c.router_z_loss_coef:
            z2 = torch.stack([d.logits for d in decisions]).logsumexp(-1).square()  # [L, N]
            z = (z2.sum() if m is None else (z2 @ m).sum()) / count
            total = total + c.router_z_loss_coef * z
        return total

    @staticmethod
    def _attention_mask(attention_mask, B, T, past, device):
        """None when plain causal attention is right; else a boolean [B, 1, T, past+T] mask."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or T == 1):
            return None
        S = past + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past)
        mask = causal[None, None].expand(B, 1, T, S)
        if padded:
            keys = attention_mask[:, None, None, -S:].bool()
            # a padding query would see no key at all; let it see itself so softmax stays finite
            itself = torch.arange(S, device=device)[None] == torch.arange(past, S, device=device)[:, None]
            mask = (mask & keys) | itself
        return mask


def init_module(module: nn.Module, cfg: ModelConfig, normal_=nn.init.normal_, ones_=nn.init.ones_) -> None:
    """Initialise one module's own parameters (the init functions are injectable for HF loading).

    Residual-branch output projections (attention out, expert and shared down) get std / sqrt(2L)
    so the residual stream's variance does not grow with depth (GPT-2 / nanoGPT).
    """
    std, residual_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.num_layers)
    if isinstance(module, Attention):
        normal_(module.qkv.weight, mean=0.0, std=std)
        normal_(module.out.weight, mean=0.0, std=residual_std)
    elif isinstance(module, MoERouter):
        normal_(module.gate.weight, mean=0.0, std=std)
    elif isinstance(module, Experts):
        normal_(module.gate_up, mean=0.0, std=std)
        normal_(module.down, mean=0.0, std=residual_std)
    elif isinstance(module, SwiGLU):
        normal_(module.gate_up.weight, mean=0.0, std=std)
        normal_(module.down.weight, mean=0.0, std=residual_std)
    elif isinstance(module, RMSNorm):
        ones_(module.weight)
    elif isinstance(module, MoeLlama):
        normal_(module.embed.weight, mean=0.0, std=std)
        if not cfg.tie_embeddings:
            normal_(module.lm_head.weight, mean=0.0, std=std)
