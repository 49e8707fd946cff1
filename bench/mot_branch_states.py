"""Branch states on real benchmark items: the batched forks against the one-tail-at-a-time walk, side by side.

Under ``peer_visibility: stable`` (and ``exact``) a primary token reads the peer's own tokenisation of the
text up to its limit; where that is not a prefix of the whole text's tokenisation, the differing tail is a
*branch* whose states the peer computes (``MixtureOfThoughts._branch_states``).  Gemma's ``'▁'`` tails put
a branch at nearly every word, so on real data this was most of a MoT training or scoring step.

For each item, primary and peer, the branches the forward asks for are recorded, then computed both ways
in the same process, alternately (the walk first on even items, the batched forks first on odd ones):
``batched`` = one pass over the text plus the tails in batches of forked caches, ``walk`` = one pass with
each tail fed and cropped away in turn.  Reports seconds per sample and peer, the ratio walk / batched,
and the largest difference between the two (absolute and relative to the largest state).

    .venv/bin/python bench/mot_branch_states.py --items 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "mot_branch_states.json"
EXPERTS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma-3-270m")
SOURCES = (("gsm8k", "test"), ("mmlu", "test"), ("cmmlu", "test"))


def build(visibility: str):
    from mot.experts.resolve import resolve_expert
    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig

    experts = [resolve_expert(name) for name in EXPERTS]
    config = MoTConfig(num_stacks=2, top_k=3, interaction_heads=4, dropout=0.0, peer_visibility=visibility)
    return MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts], config,
                             expert_specs=list(EXPERTS), encoder=HashingEncoder(32)).eval()


def requests(mot, prompt: str, target: str, primary: int, peer: int) -> list[tuple[list[int], list]]:
    """The ``(full_ids, branches)`` calls the forward makes for this sample, primary and peer."""
    from mot.thoughts.alignment import encode_pair, known_ends

    calls: list[tuple[list[int], list]] = []
    real = mot._branch_states

    states = mot.compute_peer_states(peer, [prompt], [target])[0]

    def record(expert, full_ids, branches, device):  # noqa: ANN001, ANN202
        calls.append((list(full_ids), list(branches)))
        # placeholders of the right shape: the views are not read here
        return {key: [torch.zeros(len(key[1]), h.shape[-1]) for h in states.hidden] for key in branches}

    mot._branch_states = record
    try:
        ends = known_ends(encode_pair(mot.adapters[primary].tokenizer, prompt, target))
        mot.peer_views(prompt, target, ends, [(peer, torch.tensor(1.0), states)])
    finally:
        mot._branch_states = real
    return calls


def timed(fn, *args) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4, help="items per benchmark (default 4)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "benchmarks"),
                        help="folder holding gsm8k/, mmlu/ and cmmlu/ in their upstream layouts")
    parser.add_argument("--visibility", choices=["stable", "exact"], default="stable")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mot.thoughts.data import benchmark_pairs

    mot = build(args.visibility)
    cells: dict[str, dict] = {}
    parity = {"max_abs_diff": 0.0, "max_abs_state": 0.0, "max_rel_diff": 0.0}
    n = 0
    for bench, split in SOURCES:
        pairs = benchmark_pairs(bench, Path(args.data) / bench, split, limit=args.items)
        for pair in pairs:
            for primary in range(len(EXPERTS)):
                for peer in range(len(EXPERTS)):
                    if peer == primary:
                        continue
                    cell = cells.setdefault(f"{bench} peer={EXPERTS[peer]}", {
                        "samples": 0, "branches": 0, "branch_tokens": 0, "text_tokens": 0,
                        "batched_s": 0.0, "walk_s": 0.0})
                    for full_ids, branches in requests(mot, pair.prompt, pair.target, primary, peer):
                        order = ("walk", "batched") if n % 2 == 0 else ("batched", "walk")
                        n += 1
                        got = {}
                        for name in order:
                            fn = mot._branch_states if name == "batched" else mot._branch_states_walk
                            seconds, got[name] = timed(fn, peer, full_ids, branches, "cpu")
                            cell[f"{name}_s"] += seconds
                        cell["branches"] += len(branches)
                        cell["branch_tokens"] += sum(len(t) for _, t in branches)
                        cell["text_tokens"] += len(full_ids)
                        for key in branches:
                            for a, b in zip(got["batched"][key], got["walk"][key], strict=True):
                                parity["max_abs_diff"] = max(parity["max_abs_diff"], float((a - b).abs().max()))
                                parity["max_abs_state"] = max(parity["max_abs_state"], float(b.abs().max()))
                    cell["samples"] += 1
            print(f"{bench} {pair.id} done", file=sys.stderr, flush=True)
    for cell in cells.values():
        s = cell["samples"]
        cell["batched_s_per_sample"] = round(cell["batched_s"] / s, 4)
        cell["walk_s_per_sample"] = round(cell["walk_s"] / s, 4)
        cell["walk_over_batched"] = round(cell["walk_s"] / cell["batched_s"], 2) if cell["batched_s"] else None
        cell["batched_s"], cell["walk_s"] = round(cell["batched_s"], 3), round(cell["walk_s"], 3)
    parity["max_rel_diff"] = parity["max_abs_diff"] / parity["max_abs_state"] if parity["max_abs_state"] else 0.0
    total_b = sum(c["batched_s"] for c in cells.values())
    total_w = sum(c["walk_s"] for c in cells.values())
    result = {
        "command": "python bench/mot_branch_states.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "experts": list(EXPERTS), "visibility": args.visibility, "items_per_benchmark": args.items,
        "threads": args.threads, "machine": platform.machine(), "load_avg": os.getloadavg()[0],
        "total": {"batched_s": round(total_b, 2), "walk_s": round(total_w, 2),
                  "walk_over_batched": round(total_w / total_b, 2) if total_b else None},
        "parity": parity, "cells": cells,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from mot.io import write_json

    write_json(Path(args.out), result)
    print(json.dumps({"total": result["total"], "parity": parity}, indent=1))
    for name, cell in cells.items():
        print(f"{name:40s} n={cell['samples']:3d} branches/sample={cell['branches'] / cell['samples']:6.1f} "
              f"batched {cell['batched_s_per_sample']:7.3f}s walk {cell['walk_s_per_sample']:7.3f}s "
              f"x{cell['walk_over_batched']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
