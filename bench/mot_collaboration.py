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
    # the router of the composition runs makes the qwen2 expert the primary for ~80% of queries: its peer is then
    # llama, whose facts a linear probe barely reads (<= 0.39).  Forcing the primary tests the other direction.
    "exact_recency_primary0": ({"peer_visibility": "exact", "interaction_position": "recency"}, {"primary": 0}),
    "exact_recency_primary1": ({"peer_visibility": "exact", "interaction_position": "recency"}, {"primary": 1}),
    "default_primary0": ({}, {"primary": 0}),
    "exact_recency_primary0_steps_x3": ({"peer_visibility": "exact", "interaction_position": "recency"},
                                        {"primary": 0, "steps_mult": 3.0}),
    # each remaining hypothesis on top of the mechanism that works (exact + recency, llama as primary)
    "er0_scale_values": ({"peer_visibility": "exact", "interaction_position": "recency",
                          "interaction_scale": "values"}, {"primary": 0}),
    "er0_scale_none": ({"peer_visibility": "exact", "interaction_position": "recency",
                        "interaction_scale": "none"}, {"primary": 0}),
    "er0_peer_last_stack": ({"peer_visibility": "exact", "interaction_position": "recency",
                             "peer_stack": "last"}, {"primary": 0}),
    "er0_gate_open": ({"peer_visibility": "exact", "interaction_position": "recency", "gate_init": 1.0},
                      {"primary": 0}),
    "er0_shared128": ({"peer_visibility": "exact", "interaction_position": "recency", "shared_dim": 128},
                      {"primary": 0}),
    "er0_heads1": ({"peer_visibility": "exact", "interaction_position": "recency", "interaction_heads": 1},
                   {"primary": 0}),
    "er0_lr_x3": ({"peer_visibility": "exact", "interaction_position": "recency"}, {"primary": 0, "lr_mult": 3.0}),
    # the learned router with the options that train the interaction faster
    "er_gate_open_lr_x3": ({"peer_visibility": "exact", "interaction_position": "recency", "gate_init": 1.0},
                           {"lr_mult": 3.0}),
    "lr_x3": ({}, {"lr_mult": 3.0}),
    "steps_x3": ({}, {"steps_mult": 3.0}),
}


def paired_bootstrap(a: list[float], b: list[float], samples: int = 2000, seed: int = 0,
                     weights: list[float] | None = None) -> dict[str, float]:
    """Mean of ``a - b`` over items and its percentile 95% CI (items resampled with replacement, the same
    draw for both: paired).  ``weights``: ``sum(a - b) / sum(weights)`` over the drawn items instead of the
    mean (summed nats over summed target bytes: nats per byte)."""
    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    w = [1.0] * n if weights is None else weights

    def stat(drawn: Any) -> float:
        return sum(diffs[i] for i in drawn) / sum(w[i] for i in drawn)

    draws = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(samples))
    return {"mean": stat(range(n)), "lo": draws[int(0.025 * samples)], "hi": draws[int(0.975 * samples) - 1],
            "items": n}


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
              aux: dict[str, Any] | None = None, primary: int | None = None) -> dict[str, Any]:
    """Train ``model``'s router and interaction layers (``primary``: a forced primary; the router is not used)."""
    from mot.thoughts.training import MoTTrainTask
    from mot.training import Trainer, TrainingConfig

    task = MoTTrainTask(model) if primary is None else forced_task_class()(model, None, primary=primary)
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
            primary = training.get("primary")
            info = train_mot(model, task.train, steps, lr, args.batch_size, args.seed,
                             work / f"run-{variant}-{kind}-{os.getpid()}", primary=primary)
            nats, primaries, foreign = per_query_nats(model, test, task.facts,
                                                      None if primary is None else fixed(primary, 2))
            label = f"{kind} [{variant}]"
            rows[label] = nats
            foreign_rows[label] = foreign
            record[kind] = {**info, "primary_share": [primaries.count(e) / len(primaries) for e in range(2)],
                            "primaries": primaries}
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

# -- the real-expert settings (issue "Collaboration that is real") --------------------------------------
# SmolLM2-135M forced as primary, Qwen2.5-Coder-0.5B as peer; held-out nats per target byte.
REAL_EXPERTS = ("smollm2-135m", "qwen2.5-coder-0.5b")
REAL_BASE = {"num_stacks": 4, "top_k": 2, "shared_dim": 256, "interaction_heads": 8, "dropout": 0.0,
             "router_hidden_dim": 32, "lambda_consistency": 0.0, "entropy_weight": 0.0, "balance_weight": 0.0}
# row label -> (peers, variant of VARIANTS)
REAL_ROWS = {
    "control [exact_recency]": ("self", "exact_recency"),
    "MoT [default]": ("routed", "default"),
    "MoT [exact_recency]": ("routed", "exact_recency"),
    "control [default]": ("self", "default"),
}


def split_by_group(items: list[Any], group: Any, n_train: int, n_test: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split by whole groups (module / source file): test items come only from groups no training item
    comes from; ``n_test`` test and ``n_train`` training items, each drawn round-robin over their groups."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    names = sorted(groups)
    rng = random.Random(seed)
    rng.shuffle(names)
    test_groups, count = [], 0
    for name in names:  # enough test groups for n_test items, then every other group is training material
        if count >= n_test:
            break
        test_groups.append(name)
        count += len(groups[name])
    train_groups = [n for n in names if n not in test_groups]

    def spread(chosen: list[str], cap: int) -> list[Any]:
        queues = [rng.sample(groups[n], len(groups[n])) for n in chosen]
        out: list[Any] = []
        while len(out) < cap and any(queues):
            for q in queues:
                if q and len(out) < cap:
                    out.append(q.pop())
        return out

    return spread(train_groups, n_train), spread(test_groups, n_test)


def real_items(setting: str, n_train: int, n_test: int, seed: int) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``(prompt, target, group)`` items of a real setting, split by module (``qa``: stdlib docstring Q&A,
    ``mot.thoughts.data.stdlib_qa_pairs``) or by stdlib source file (``code``: def + docstring -> the start of
    the body, ``mot.data.mixed_domain.code_samples``).  Material on every machine: the Python stdlib sources."""
    if setting == "qa":
        from mot.thoughts.data import stdlib_qa_pairs

        items = [(p.prompt, p.target, p.id.split(":", 1)[1].split(".", 1)[0]) for p in stdlib_qa_pairs()]
    elif setting == "code":
        from mot.data.mixed_domain import code_samples

        items = [(s.prompt, s.target, s.source) for s in code_samples()]
    else:
        raise ValueError(f"unknown real setting {setting!r}")
    return split_by_group(items, lambda it: it[2], n_train, n_test, seed)


class StateStore:
    """Every expert's per-stack states of every item, in memory, computed once per run (the experts are frozen,
    so they depend on the text and the expert only) and shared by every row.  The same ``PeerStates`` object is
    returned each time, so the branch states that ``exact`` visibility needs (``PeerStates.branches``) are
    computed once too.  Duck-types the ``PeerStateCache`` reading API (``states``, ``features``)."""

    def __init__(self) -> None:
        self.store: dict[tuple[int, str, str], Any] = {}

    def build(self, model: Any, items: list[tuple[str, str, str]], batch_size: int = 4) -> float:
        t0 = time.perf_counter()
        for expert in range(model.num_experts):
            todo = sorted({(p, t) for p, t, _ in items if (expert, p, t) not in self.store}, key=lambda x: len(x[0] + x[1]))
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                for (p, t), st in zip(chunk, model.compute_peer_states(expert, [p for p, _ in chunk],
                                                                       [t for _, t in chunk]), strict=True):
                    self.store[(expert, p, t)] = st
        return time.perf_counter() - t0

    def states(self, expert: int, prompt: str, target: str) -> Any:
        return self.store.get((expert, prompt, target))

    def features(self, prompts: list[str]) -> None:
        return None


def tree_branch_states(model: Any, expert: int, full_ids: list[int], branches: Any, device: Any) -> dict[Any, list[torch.Tensor]]:
    """The states ``MixtureOfThoughts._branch_states`` computes (each branch tail ``(k, tail)`` read after
    ``full_ids[:k]``), in ONE forward of ``full_ids`` followed by every tail, under a tree-shaped attention mask
    (a tail token sees ``full_ids[:k]`` and its own tail's earlier tokens) with the positions it would have had:
    one pass instead of two small cached passes per branch, which on a CPU cost a full read of the weights
    each.  Checked against the cached walk at the start of a run (``tree_check`` in the JSON)."""
    hf = model.experts[expert]
    base = hf.base_model
    branches = sorted(branches)
    ids, pos = list(full_ids), list(range(len(full_ids)))
    spans = []
    for k, tail in branches:
        spans.append((len(ids), len(tail)))
        ids += list(tail)
        pos += list(range(k, k + len(tail)))
    n, t_full = len(ids), len(full_ids)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:t_full, :t_full] = torch.ones(t_full, t_full, dtype=torch.bool).tril()
    for (k, _tail), (start, length) in zip(branches, spans, strict=True):
        allowed[start:start + length, :k] = True
        allowed[start:start + length, start:start + length] = torch.ones(length, length, dtype=torch.bool).tril()
    dtype = next(hf.parameters()).dtype
    mask = torch.zeros(1, 1, n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    stops = [stop - 1 for _, stop in model.stacks[expert]]
    captured: dict[int, torch.Tensor] = {}
    hooks = [base.layers[i].register_forward_hook(
        lambda _m, _a, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in stops]
    try:
        with torch.no_grad():
            base(input_ids=torch.tensor([ids], device=hf.device), attention_mask=mask.to(hf.device),
                 position_ids=torch.tensor([pos], device=hf.device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {key: [captured[i][0, start:start + length].detach().to(device) for i in stops]
            for key, (start, length) in zip(branches, spans, strict=True)}


def tree_mot_class():
    from mot.thoughts import MixtureOfThoughts

    class TreeBranchMoT(MixtureOfThoughts):
        """MixtureOfThoughts whose ``exact``/``stable`` branch states come from ``tree_branch_states``."""

        def _branch_states(self, expert, full_ids, branches, device):  # noqa: ANN001, ANN202
            return tree_branch_states(self, expert, full_ids, branches, device)

    return TreeBranchMoT


def forced(primary: int, num_experts: int, batch: int) -> Any:
    """A fixed decision: ``primary`` first, the others after, uniform weights (what the issue measured)."""
    return fixed(primary, num_experts)([""] * batch)


def forced_task_class():
    from mot.thoughts.model import lm_loss
    from mot.thoughts.training import MoTTrainTask, collect_peer_states

    class ForcedTrainTask(MoTTrainTask):
        """The LM loss of a MoT whose primary is forced (expert ``primary``); peer states from ``store``."""

        def __init__(self, model: Any, store: StateStore | None, primary: int = 0) -> None:
            super().__init__(model, peer_cache=store, cache_primary=True)
            self.primary = primary

        def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            prompts, targets = batch["prompts"], batch["targets"]
            routing = forced(self.primary, self.module.num_experts, len(prompts))
            peers = collect_peer_states(self.module, prompts, targets, [routing], cache=self.peer_cache, primaries=True)
            out = self.module(prompts, targets, routing=routing, peer_states=peers)
            lm = lm_loss(out)
            return lm, {"lm_loss": float(lm.detach())}

    return ForcedTrainTask


def score_real(model: Any, items: list[tuple[str, str, str]], primary: int, store: StateStore,
               batch_size: int = 4) -> list[float]:
    """Nats of each item's target tokens + the primary's EOS (the rows ``lm_loss`` scores), ``primary`` forced."""
    from mot.thoughts.training import collect_peer_states, target_rows

    nats: list[float] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            prompts, targets = [p for p, _, _ in chunk], [t for _, t, _ in chunk]
            routing = forced(primary, model.num_experts, len(chunk))
            peers = collect_peer_states(model, prompts, targets, [routing], cache=store, primaries=True)
            out = model(prompts, targets, routing=routing, peer_states=peers)
            for logits, tok, eos in zip(out.logits, out.tokens, out.eos_token_ids, strict=True):
                rows = target_rows(tok, eos)
                labels = torch.cat([tok.input_ids[1:], tok.input_ids.new_tensor([eos])])
                lp = torch.log_softmax(logits[rows].float(), -1)
                nats.append(float(-lp.gather(1, labels[rows][:, None]).sum()))
    return nats


def real_setting(args: argparse.Namespace, setting: str, experts: list[Any], store_dir: Path) -> dict[str, Any]:
    from mot.evaluation.metrics import paired_bootstrap_ci
    from mot.thoughts import HashingEncoder, MoTConfig

    n_train, n_test = (args.qa_train, args.qa_test) if setting == "qa" else (args.code_train, args.code_test)
    train, test = real_items(setting, n_train, n_test, args.seed)
    nbytes = [len(t.encode("utf-8")) for _, t, _ in test]
    cls = tree_mot_class()

    def build(overrides: dict[str, Any]) -> Any:
        return cls([m for m, _ in experts], [t for _, t in experts], MoTConfig(**{**REAL_BASE, **overrides}),
                   expert_specs=list(REAL_EXPERTS), encoder=HashingEncoder(64), seed=args.seed)

    store = StateStore()
    alone = build({})  # untrained: every gate is zero, exactly its primary
    state_seconds = store.build(alone, train + test)
    print(f"[{setting}] {len(train)} train / {len(test)} test items; states {state_seconds:.0f} s",
          file=sys.stderr, flush=True)
    stamp = {"setting": setting, "train": len(train), "test": len(test), "steps": args.real_steps, "lr": args.real_lr,
             "batch": args.real_batch, "seed": args.seed, "base": REAL_BASE,
             "test_keys": [hash_text(p + "\0" + t) for p, t, _ in test]}
    record: dict[str, Any] = {"train_items": len(train), "test_items": len(test),
                              "train_groups": len({g for _, _, g in train}), "test_groups": len({g for _, _, g in test}),
                              "test_target_bytes": sum(nbytes), "state_seconds": state_seconds, "rows_meta": {}}
    per_item: dict[str, list[float]] = {}

    def cached_row(label: str, compute: Any) -> list[float]:
        path = store_dir / f"{setting}-{label.replace(' ', '_').replace('[', '').replace(']', '')}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("stamp") == stamp:
                record["rows_meta"][label] = {**saved["meta"], "resumed": True}
                return saved["nats"]
        nats, meta = compute()
        path.write_text(json.dumps({"stamp": stamp, "meta": meta, "nats": nats}))
        record["rows_meta"][label] = meta
        return nats

    for e, name in enumerate(REAL_EXPERTS):
        per_item[f"{name} alone"] = cached_row(f"{name} alone", lambda e=e: (score_real(alone, test, e, store), {}))
    # the exact rule's branch states computed in one tree-masked pass: check it against the cached walk
    if setting == args.real[0]:
        record["tree_check"] = tree_check(build({"peer_visibility": "exact"}), store, test)
    for label in args.real_rows:
        peers, variant = REAL_ROWS[label]
        overrides, _ = VARIANTS[variant]

        def run_row(overrides: dict[str, Any] = overrides, peers: str = peers, label: str = label) -> Any:
            model = build({**overrides, "peers": peers})
            info = train_real(model, store, train, args, store_dir / f"run-{setting}-{os.getpid()}")
            t0 = time.perf_counter()
            nats = score_real(model, test, 0, store)
            info["score_seconds"] = time.perf_counter() - t0
            info["gates_mean_abs"] = [float(layer.gates[0].detach().abs().mean()) for layer in model.interactions]
            info["mot_config"] = {**REAL_BASE, **overrides, "peers": peers}
            return nats, info

        per_item[label] = cached_row(label, run_row)
        print(f"[{setting}] {label}: {sum(per_item[label]) / sum(nbytes):.4f} nats/byte", file=sys.stderr, flush=True)
    rows = {k: paired_bootstrap(v, [0.0] * len(v), weights=nbytes) for k, v in per_item.items()}
    diffs: dict[str, Any] = {}
    pairs = [("MoT [exact_recency]", "control [exact_recency]"), ("MoT [default]", "control [default]"),
             ("MoT [exact_recency]", "MoT [default]"), ("MoT [default]", "control [exact_recency]"),
             ("MoT [exact_recency]", f"{REAL_EXPERTS[1]} alone"), ("MoT [exact_recency]", f"{REAL_EXPERTS[0]} alone"),
             ("control [exact_recency]", f"{REAL_EXPERTS[0]} alone")]
    per_byte = {k: [x / b for x, b in zip(v, nbytes, strict=True)] for k, v in per_item.items()}
    for a, b in pairs:
        if a in per_item and b in per_item:
            diffs[f"{a} - {b}"] = {**paired_bootstrap(per_item[a], per_item[b], weights=nbytes),
                                   "per_item_mean": paired_bootstrap_ci(per_byte[a], per_byte[b])}
    record.update({"rows": rows, "differences": diffs, "per_item_nats": per_item, "target_bytes": nbytes,
                   "test_groups_list": sorted({g for _, _, g in test})})
    return record


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def tree_check(model: Any, store: StateStore, items: list[tuple[str, str, str]], count: int = 3) -> dict[str, Any]:
    """Max |difference| between ``tree_branch_states`` and the cached walk (``MixtureOfThoughts._branch_states``)
    on the peer branches the ``exact`` rule needs for the first ``count`` items that have any."""
    from mot.thoughts import MixtureOfThoughts
    from mot.thoughts.alignment import encode_pair, known_ends

    worst, scale, checked = 0.0, 0.0, 0
    for p, t, _ in items:
        st = store.states(1, p, t)
        probe_states = type(st)(st.expert, st.tokens, st.ends, st.hidden)  # a fresh copy: no branches yet
        tok = encode_pair(model.adapters[0].tokenizer, p, t)
        model.peer_views(p, t, known_ends(tok), [(1, torch.tensor(0.5), probe_states)])
        if not probe_states.branches:
            continue
        ids = st.tokens.input_ids.tolist()
        walk = MixtureOfThoughts._branch_states(model, 1, ids, list(probe_states.branches), st.hidden[0].device)
        for key, states in probe_states.branches.items():
            for a, b in zip(states, walk[key], strict=True):
                worst = max(worst, float((a - b).abs().max()))
                scale = max(scale, float(b.abs().max()))
        checked += 1
        if checked >= count:
            break
    return {"items": checked, "max_abs_diff": worst, "max_abs_state": scale}


def train_real(model: Any, store: StateStore, train: list[tuple[str, str, str]], args: argparse.Namespace,
               run_dir: Path) -> dict[str, Any]:
    import shutil

    from mot.training import Trainer, TrainingConfig

    task = forced_task_class()(model, store, primary=0)
    cfg = TrainingConfig(batch_size=args.real_batch, learning_rate=args.real_lr, max_steps=args.real_steps,
                         warmup_steps=10, min_lr_ratio=0.1, max_grad_norm=1.0, device="cpu", precision="fp32",
                         seed=args.seed, log_every=max(1, args.real_steps // 4), best_metric=None, tensorboard=False,
                         plots=False, progress=False, keep_last=1)
    t0 = time.perf_counter()
    result = Trainer(task, cfg, [(p, t) for p, t, _ in train], None, run_dir=run_dir, collate_fn=task.collate).fit()
    seconds = time.perf_counter() - t0
    losses = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        losses = [json.loads(line).get("lm_loss") for line in metrics.read_text().splitlines() if "lm_loss" in line]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"steps": result.step, "train_seconds": seconds, "train_lm_loss_log": losses}


def real(args: argparse.Namespace) -> dict[str, Any]:
    from mot.experts.resolve import resolve_expert

    experts = [resolve_expert(name) for name in REAL_EXPERTS]
    store_dir = Path(args.work_dir).parent / "collaboration_real"
    store_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"experts": {"primary (forced)": REAL_EXPERTS[0], "peer": REAL_EXPERTS[1]},
                           "mot_config": REAL_BASE, "steps": args.real_steps, "batch_size": args.real_batch,
                           "lr": args.real_lr, "rows_defined": {k: list(v) for k, v in REAL_ROWS.items()},
                           "unit": "nats per target byte (target tokens + the primary's EOS, summed over items, "
                                   "divided by the items' target UTF-8 bytes); CIs: 2000 paired item resamples",
                           "settings": {}}
    for setting in args.real:
        t0 = time.perf_counter()
        out["settings"][setting] = real_setting(args, setting, experts, store_dir)
        out["settings"][setting]["wall_seconds"] = time.perf_counter() - t0
    return out



def write_result(result: dict[str, Any], name: str, args: argparse.Namespace, t0: float) -> Path:
    """Add the run's command, wall time and load to ``result`` and write ``bench/results/NAME[_TAG].json``."""
    result.update({"command": " ".join(["python", "bench/mot_collaboration.py", *sys.argv[1:]]),
                   "wall_seconds": time.perf_counter() - t0, "threads": args.threads,
                   "loadavg_end": os.getloadavg()[0]})
    out = ROOT / "bench" / "results" / f"{name}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return out


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
    parser.add_argument("--real", nargs="+", default=[], choices=["qa", "code"],
                        help="the real-expert settings instead of the composition task (SmolLM2-135M forced as "
                             "primary, Qwen2.5-Coder-0.5B as peer): stdlib docstring Q&A, code continuation")
    parser.add_argument("--real-rows", nargs="+", default=list(REAL_ROWS)[:3], choices=list(REAL_ROWS))
    parser.add_argument("--real-steps", type=int, default=120)
    parser.add_argument("--real-batch", type=int, default=4)
    parser.add_argument("--real-lr", type=float, default=1e-3)
    parser.add_argument("--qa-train", type=int, default=240)
    parser.add_argument("--qa-test", type=int, default=60)
    parser.add_argument("--code-train", type=int, default=240)
    parser.add_argument("--code-test", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    if args.real:
        main_real(args, t0)
        return
    result = composition(args)
    out = write_result(result, "mot_collaboration", args, t0)
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


def main_real(args: argparse.Namespace, t0: float) -> None:
    result = real(args)
    out = write_result(result, "mot_collaboration_real", args, t0)
    for setting, rec in result["settings"].items():
        print(f"\n{setting}: {rec['train_items']} train / {rec['test_items']} held-out items "
              f"({rec['test_groups']} held-out groups), nats per target byte [95% CI]")
        for name, row in rec["rows"].items():
            print(f"  {name:<34} {row['mean']:.4f} [{row['lo']:.4f}, {row['hi']:.4f}]")
        for name, d in rec["differences"].items():
            print(f"  {name:<58} {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
