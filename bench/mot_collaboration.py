"""What collaboration adds: each expert alone, the capacity control and MoT, side by side in one run.

On the controlled composition task (``mot.data.composition``): two small experts (llama and qwen2
families, two byte-level BPE tokenizers) are trained here with the project's Trainer on disjoint
synthetic facts; test queries need one fact from each, about entities no training query names.  Any
single-expert router, and the capacity control (MoT whose peers are copies of the primary,
``MoTConfig.peers="self"``), pays at least ``log(values)`` nats per query (the cap).  MoT is trained
exactly like its control (same config, steps, data, seed); both are scored in nats per query (target
tokens + EOS, summed) with paired bootstrap 95% CIs.

    .venv/bin/python bench/mot_collaboration.py                      # the default mechanism
    .venv/bin/python bench/mot_collaboration.py --variant NAME ...    # hypotheses (see VARIANTS)
    .venv/bin/python bench/mot_collaboration.py --probe --variant default exact_recency_prediction \
        exact_recency exact_prediction                                # the run in docs/results.md

Each variant trains its own control and MoT (``peers="self"`` / ``"routed"``, otherwise identical).  Per
query it reports the nats of the whole target and of the *foreign* value (the one the primary's own facts
do not hold; the cap applies to it).  ``--probe``: linear probes of each expert's states for its facts.
Writes ``bench/results/mot_collaboration[_TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

BASE_MOT = {"num_stacks": 2, "top_k": 2, "shared_dim": 64, "interaction_heads": 4, "dropout": 0.0,
            "router_hidden_dim": 32, "lambda_consistency": 0.0, "entropy_weight": 0.0, "balance_weight": 0.0}
# hypothesis -> (MoTConfig overrides, training overrides)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "scale_values": ({"interaction_scale": "values"}, {}),
    "scale_none": ({"interaction_scale": "none"}, {}),
    "peer_last_stack": ({"peer_stack": "last"}, {}),
    "readout_prediction": ({"peer_readout": "prediction"}, {}),
    "gate_open": ({"gate_init": 1.0}, {}),
    "stacks4": ({"num_stacks": 4}, {}),
    "heads1": ({"interaction_heads": 1}, {}),
    "shared128": ({"shared_dim": 128}, {}),
    "recency": ({"interaction_position": "recency"}, {}),
    "visibility_span": ({"peer_visibility": "span"}, {}),
    "exact": ({"peer_visibility": "exact"}, {}),
    "exact_recency": ({"peer_visibility": "exact", "interaction_position": "recency"}, {}),
    "exact_prediction": ({"peer_visibility": "exact", "peer_readout": "prediction"}, {}),
    "exact_recency_prediction": ({"peer_visibility": "exact", "interaction_position": "recency",
                                  "peer_readout": "prediction"}, {}),
    "recency_last_stack": ({"interaction_position": "recency", "peer_stack": "last"}, {}),
    "lr_x3": ({}, {"lr_mult": 3.0}),
    "steps_x3": ({}, {"steps_mult": 3.0}),
}


def paired_bootstrap(a: list[float], b: list[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over items and its percentile 95% CI (items resampled with replacement)."""
    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return {"mean": sum(diffs) / n, "lo": means[int(0.025 * samples)], "hi": means[int(0.975 * samples) - 1]}


def bootstrap_mean(a: list[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    return paired_bootstrap(a, [0.0] * len(a), samples, seed)


def value_spans(query: Any, facts: dict[str, Any]) -> list[tuple[int, int]]:
    """Character range of each entity's value in ``prompt + target`` (with the space before it)."""
    first = len(query.prompt)
    second = first + 1 + len(facts[query.entities[0]][1]) + len(" &")
    return [(first, second - len(" &")), (second, second + 1 + len(facts[query.entities[1]][1]))]


def per_query_nats(model: Any, queries: list[Any], facts: dict[str, Any], routing: Any = None,
                   batch_size: int = 16) -> tuple[list[float], list[int], list[float]]:
    """Nats of each query's target tokens + EOS under ``model`` (a MixtureOfThoughts; ``routing(prompts)`` gives
    a fixed decision, default the router's), each query's primary, and the nats of the value that the
    primary's own facts do not hold (the *foreign* value: tokens starting inside its character range)."""
    from mot.thoughts.training import target_rows

    nats, primaries, foreign = [], [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(queries), batch_size):
            chunk = queries[i:i + batch_size]
            prompts, targets = [q.prompt for q in chunk], [q.target for q in chunk]
            out = model(prompts, targets, routing=routing(prompts) if routing else None)
            for q, logits, tok, eos, primary in zip(chunk, out.logits, out.tokens, out.eos_token_ids, out.primary,
                                                    strict=True):
                rows = target_rows(tok, eos)
                labels = torch.cat([tok.input_ids[1:], tok.input_ids.new_tensor([eos])])
                lp = torch.log_softmax(logits[rows].float(), -1)
                token_nats = -lp.gather(1, labels[rows][:, None])[:, 0]
                nats.append(float(token_nats.sum()))
                starts = torch.cat([tok.char_start, tok.char_start.new_tensor([1 << 30])])[rows + 1]
                lo, hi = value_spans(q, facts)[q.experts.index(1 - primary) if (1 - primary) in q.experts else 0]
                inside = (starts >= lo) & (starts < hi)
                foreign.append(float(token_nats[inside].sum()))
            primaries += out.primary
    return nats, primaries, foreign


def fixed(primary: int, num_experts: int):
    from mot.routing import RoutingDecision

    def decide(prompts: list[str]) -> RoutingDecision:
        order = [primary] + [e for e in range(num_experts) if e != primary]
        idx = torch.tensor([order] * len(prompts))
        w = torch.full((len(prompts), num_experts), 1.0 / num_experts)
        probs = torch.zeros(len(prompts), num_experts).scatter(1, idx, w)
        return RoutingDecision(logits=probs.log(), probs=probs, indices=idx, weights=w, primary=idx[:, 0])
    return decide


def probe(model: Any, tokenizer: Any, task: Any, owner: int, steps: int = 300,
          at: str = "entity") -> list[dict[str, float]]:
    """Is a fact linearly readable from an expert's states?  For each query naming an entity of ``owner``, the
    expert's hidden state (every layer) at the last token of that entity in the prompt (``at="entity"``) or
    at the prompt's last token (``at="prompt_end"``, what a primary sees before answering); a softmax probe is fit on training-query entities and
    scored on held-out ones: accuracy per layer (chance: 1/values)."""
    from mot.thoughts.alignment import encode_pair

    def collect(queries: list[Any]) -> tuple[list[torch.Tensor], list[int]]:
        feats: list[list[torch.Tensor]] = []
        labels = []
        for q in queries:
            for ent in q.entities:
                if task.facts[ent][0] != owner:
                    continue
                end = q.prompt.index(ent) + len(ent) if at == "entity" else len(q.prompt)
                tok = encode_pair(tokenizer, q.prompt, q.target)
                pos = int((tok.char_end <= end).nonzero().max())
                with torch.no_grad():
                    hs = model(tok.input_ids[None], output_hidden_states=True).hidden_states
                feats.append([h[0, pos] for h in hs])
                labels.append(task.values[owner].index(task.facts[ent][1]))
        return [torch.stack([f[i] for f in feats]) for i in range(len(feats[0]))], labels

    train_x, train_y = collect(task.train)
    test_x, test_y = collect(task.test)
    out = []
    for layer, (xtr, xte) in enumerate(zip(train_x, test_x, strict=True)):
        mean, std = xtr.mean(0), xtr.std(0) + 1e-6
        lin = torch.nn.Linear(xtr.shape[1], len(task.values[owner]))
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
        ytr = torch.tensor(train_y)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin((xtr - mean) / std), ytr).backward()
            opt.step()
        with torch.no_grad():
            acc_te = float((lin((xte - mean) / std).argmax(-1) == torch.tensor(test_y)).float().mean())
            acc_tr = float((lin((xtr - mean) / std).argmax(-1) == ytr).float().mean())
        out.append({"layer": layer, "train_acc": acc_tr, "heldout_acc": acc_te, "heldout_items": len(test_y)})
    return out


def build_mot(experts: list[Any], names: list[str], overrides: dict[str, Any], seed: int):
    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig

    return MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts], MoTConfig(**{**BASE_MOT, **overrides}),
                             expert_specs=names, encoder=HashingEncoder(64), seed=seed)


def train_mot(model: Any, queries: list[Any], steps: int, lr: float, batch_size: int, seed: int, run_dir: Path,
              aux: dict[str, Any] | None = None) -> dict[str, Any]:
    from mot.thoughts.training import MoTTrainTask
    from mot.training import Trainer, TrainingConfig

    task = MoTTrainTask(model)
    cfg = TrainingConfig(batch_size=batch_size, learning_rate=lr, max_steps=steps, warmup_steps=10, min_lr_ratio=0.1,
                         max_grad_norm=1.0, device="cpu", precision="fp32", seed=seed, log_every=max(1, steps // 5),
                         best_metric=None, tensorboard=False, plots=False, progress=False, keep_last=1)
    pairs = [(q.prompt, q.target) for q in queries]
    t0 = time.perf_counter()
    result = Trainer(task, cfg, pairs, None, run_dir=run_dir, collate_fn=task.collate).fit()
    return {"steps": result.step, "seconds": time.perf_counter() - t0}


def composition(args: argparse.Namespace) -> dict[str, Any]:
    from mot.data.composition import build_composition_task, load_composition_expert, train_composition_expert

    task = build_composition_task(num_experts=2, entities_per_expert=args.entities, values_per_expert=args.values,
                                  held_out_per_expert=args.held_out, train_queries=args.train_queries,
                                  test_queries=args.test_queries, seed=args.seed)
    work = Path(args.work_dir)
    families = ["llama", "qwen2"]
    t0 = time.perf_counter()
    paths = [train_composition_expert(task, e, f, work / f"expert{e}-{f}", steps=args.expert_steps, seed=args.seed + e)
             for e, f in enumerate(families)]
    expert_seconds = time.perf_counter() - t0
    experts = [load_composition_expert(p) for p in paths]
    names = [f"{f} (facts {e})" for e, f in enumerate(families)]
    test = task.test
    rows: dict[str, list[float]] = {}
    foreign_rows: dict[str, list[float]] = {}
    alone = build_mot(experts, names, {}, args.seed)  # untrained: every gate is zero, exactly its primary
    for e, name in enumerate(names):
        nats, _, foreign = per_query_nats(alone, test, task.facts, fixed(e, 2))
        rows[f"{name} alone"] = nats
        foreign_rows[f"{name} alone"] = foreign
    # the best single expert per query: an oracle single-expert router (its cap is the same)
    best = [min(range(2), key=lambda e, i=i: rows[f"{names[e]} alone"][i]) for i in range(len(test))]
    rows["oracle single-expert router"] = [rows[f"{names[e]} alone"][i] for i, e in enumerate(best)]
    foreign_rows["oracle single-expert router"] = [foreign_rows[f"{names[e]} alone"][i] for i, e in enumerate(best)]
    results: dict[str, Any] = {"variants": {}}
    if args.probe:
        results["probe"] = {f"{names[e]} at {at}": probe(experts[e][0], experts[e][1], task, e, at=at)
                            for e in range(2) for at in ("entity", "prompt_end")}
        for name, layers in results["probe"].items():
            print(f"probe {name}: held-out acc per layer " + " ".join(f"{r['heldout_acc']:.2f}" for r in layers),
                  file=sys.stderr, flush=True)
    for variant in args.variant:
        overrides, training = VARIANTS[variant]
        steps = int(round(args.steps * training.get("steps_mult", 1.0)))
        lr = args.lr * training.get("lr_mult", 1.0)
        record: dict[str, Any] = {"mot_config": {**BASE_MOT, **overrides}, "steps": steps, "lr": lr}
        for kind, peers in (("control", "self"), ("MoT", "routed")):
            model = build_mot(experts, names, {**overrides, "peers": peers}, args.seed)
            info = train_mot(model, task.train, steps, lr, args.batch_size, args.seed,
                             work / f"run-{variant}-{kind}-{os.getpid()}")
            nats, primaries, foreign = per_query_nats(model, test, task.facts)
            label = f"{kind} [{variant}]"
            rows[label] = nats
            foreign_rows[label] = foreign
            record[kind] = {**info, "primary_share": [primaries.count(e) / len(primaries) for e in range(2)]}
            print(f"{label}: {sum(nats) / len(nats):.3f} nats/query, foreign value {sum(foreign) / len(foreign):.3f}"
                  f" ({info['seconds']:.0f} s)", file=sys.stderr, flush=True)
        record["mot_minus_control"] = paired_bootstrap(rows[f"MoT [{variant}]"], rows[f"control [{variant}]"])
        record["mot_minus_cap"] = paired_bootstrap(rows[f"MoT [{variant}]"], [task.cap_nats] * len(test))
        record["foreign_mot_minus_control"] = paired_bootstrap(foreign_rows[f"MoT [{variant}]"],
                                                               foreign_rows[f"control [{variant}]"])
        record["foreign_mot_minus_cap"] = paired_bootstrap(foreign_rows[f"MoT [{variant}]"], [task.cap_nats] * len(test))
        results["variants"][variant] = record
    results.update({
        "task": {"experts": names, "train_queries": len(task.train), "test_queries": len(test),
                 "entities_per_expert": args.entities, "held_out_per_expert": args.held_out,
                 "values_per_expert": args.values, "cap_nats": task.cap_nats, "expert_steps": args.expert_steps,
                 "expert_train_seconds": expert_seconds, "seed": args.seed},
        "rows": {k: {"nats_per_query": bootstrap_mean(v), "foreign_value_nats": bootstrap_mean(foreign_rows[k])}
                 for k, v in rows.items() if k in foreign_rows},
        "per_query": rows, "per_query_foreign": foreign_rows,
    })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--expert-steps", type=int, default=500)
    parser.add_argument("--entities", type=int, default=40)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--values", type=int, default=8)
    parser.add_argument("--train-queries", type=int, default=240)
    parser.add_argument("--test-queries", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "composition"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--probe", action="store_true", help="linear probe of each expert's states for its facts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    result = composition(args)
    result.update({"command": " ".join(["python", "bench/mot_collaboration.py", *sys.argv[1:]]),
                   "wall_seconds": time.perf_counter() - t0, "threads": args.threads,
                   "loadavg_end": os.getloadavg()[0]})
    out = ROOT / "bench" / "results" / f"mot_collaboration{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    cap = result["task"]["cap_nats"]
    print(f"\ncomposition task: {result['task']['test_queries']} held-out queries, cap log({args.values}) = {cap:.3f}")
    print(f"  {'method':<34} {'nats/query [95% CI]':>26} {'foreign value nats [95% CI]':>30}")
    for name, row in result["rows"].items():
        m, f = row["nats_per_query"], row["foreign_value_nats"]
        print(f"  {name:<34} {m['mean']:8.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"
              f"   {f['mean']:8.3f} [{f['lo']:.3f}, {f['hi']:.3f}]")
    for variant, rec in result["variants"].items():
        d, c = rec["mot_minus_control"], rec["mot_minus_cap"]
        fd, fc = rec["foreign_mot_minus_control"], rec["foreign_mot_minus_cap"]
        print(f"  {variant}: MoT - control {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}];"
              f" MoT - cap {c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}];"
              f" foreign value: MoT - control {fd['mean']:+.3f} [{fd['lo']:+.3f}, {fd['hi']:+.3f}],"
              f" MoT - cap {fc['mean']:+.3f} [{fc['lo']:+.3f}, {fc['hi']:+.3f}]")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
