"""moellama's MoE layer (8 experts, top-2) forward+backward vs a dense SwiGLU FFN with the same
active parameters (hidden = top_k * ffn_dim), at 4k tokens.  Target: MoE <= 1.3x dense.

Also times the dispatch alternatives for the experts (same routing): ``sorted_mm`` (the model's
CPU path: one custom autograd node, one ``mm`` per expert segment, hand-written backward; one
``.tolist()`` host sync), ``grouped_mm`` (the model's CUDA path: no host sync), ``padded_bmm``
(capacity = max count: one ``.item()`` host sync, padding FLOPs) and ``loop`` (plain autograd, one
Python iteration per expert).

The dense baseline is a plain SwiGLU with gate and up fused into one ``nn.Linear`` [d -> 2*hidden]
(the same fusion the experts use), SiLU(gate) * up, then ``nn.Linear`` down.  MoE and dense are
timed alternately (A B A B ...), medians, so load from other work on a shared machine hits both alike.

    .venv/bin/python bench/moellama_moe_layer.py [--device cpu|cuda] [--threads 1] [--tokens 4096] [--dim 512]

Writes bench/results/moellama_moe_layer.json (all numbers from this one run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mot.moellama import model as ml
from mot.moellama.config import ModelConfig


def padded_bmm(experts: ml.Experts, x, indices, weights):
    N, K = indices.shape
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // K
    counts = torch.bincount(flat, minlength=experts.num_experts)
    cap = int(counts.max().item())  # host sync
    starts = counts.cumsum(0) - counts
    slot = torch.arange(N * K, device=x.device) - starts[flat[order]]
    buf = x.new_zeros(experts.num_experts, cap, x.shape[1])
    buf[flat[order], slot] = x[token]
    gate, up = torch.bmm(buf, experts.gate_up).chunk(2, dim=-1)
    out = torch.bmm(F.silu(gate) * up, experts.down)[flat[order], slot]
    out = out * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, token, out)


def timed(fns: dict, reps: int, sync) -> dict[str, float]:
    """Median seconds of each function, run in alternation after warm-ups."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    sync()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ffn-dim", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both layers (fuses the small ops)")
    ap.add_argument("--out", default="bench/results/moellama_moe_layer.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    cfg = ModelConfig(dim=args.dim, num_heads=8, num_experts=8, top_k=2, ffn_dim=args.ffn_dim)
    moe = ml.MoE(cfg)
    moe.apply(lambda m: ml.init_module(m, cfg))
    moe = moe.to(device, dtype)
    dense = ml.SwiGLU(args.dim, cfg.top_k * args.ffn_dim).to(device, dtype)  # same active parameters
    timed_moe, timed_dense = (torch.compile(moe), torch.compile(dense)) if args.compile else (moe, dense)
    x = torch.randn(1, args.tokens, args.dim, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)

    def step(module):
        def run():
            out = module(x)
            out = out[0] if isinstance(out, tuple) else out
            out.backward(grad)
        return run

    results = timed({"moe_layer": step(timed_moe), "dense_swiglu": step(timed_dense)}, args.reps, sync)

    with torch.no_grad():
        decision = moe.router(x.detach()[0].float().to(dtype))
    xs = x.detach()[0].clone().requires_grad_()
    g2 = torch.randn_like(xs)
    real = ml._experts_backend

    def with_backend(name):
        def run():
            ml._experts_backend = lambda t: name
            try:
                moe.experts(xs, decision.indices, decision.weights.to(dtype)).backward(g2)
            finally:
                ml._experts_backend = real
        return run

    dispatch = {name: with_backend(name) for name in ("sorted_mm", "grouped_mm", "loop")}
    dispatch["padded_bmm"] = lambda: padded_bmm(moe.experts, xs, decision.indices,
                                                decision.weights.to(dtype)).backward(g2)
    if not hasattr(torch, "_grouped_mm"):
        del dispatch["grouped_mm"]
    for name, t in timed(dispatch, args.reps, sync).items():
        results[f"experts_{name}"] = t

    report = {
        "benchmark": "moellama_moe_layer", "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "tokens": args.tokens, "dim": args.dim,
        "ffn_dim": args.ffn_dim, "compiled": args.compile, "num_experts": 8, "top_k": 2, "dense_hidden": 2 * args.ffn_dim,
        "dense_baseline": "SwiGLU: one Linear d->2*hidden (gate|up fused, as in the experts), silu(gate)*up, Linear down",
        "timing": f"alternating MoE/dense, median of {args.reps} after 2 warm-ups",
        "moe_layer_experts_backend": ml._experts_backend(x),
        "seconds_fwd_bwd_median": results,
        "ratio_moe_over_dense": results["moe_layer"] / results["dense_swiglu"],
        "target_ratio": 1.3,
    }
    report["meets_target"] = report["ratio_moe_over_dense"] <= 1.3
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
