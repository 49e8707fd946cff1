"""The cost of exact causality (issue 19): MoT training steps and full-mode decoding under the exact
``stable`` rule against the old ``stable`` rule, side by side in one run.

The old rule let a primary token read the peer tokens *of the whole text* that end before the start of
the last raw pre-token it has seen; it leaked wherever a normaliser or a ``▁`` replacement crosses that
point.  The exact rule reads the peer's own tokenisation of the text up to that point: one tokenizer call
per distinct limit, and a *branch* (extra peer tokens run with the KV cache) where that tokenisation is not
a prefix of the whole text's.  The old rule is reproduced here by patching the two places it lived (the
views of the forward and the decoder's ``span``-style feeding), so both run on the same code and data.

Reports, per expert set: training step seconds (MoT step: forward + backward + AdamW, the same batches,
phases alternated, fastest repeat kept) new / old; the extra peer work (branch tokens per peer token of the
whole text, cut tokenisations per sample); full decoding per-token seconds new / old.

    .venv/bin/python bench/mot_causality_cost.py --sets tiny,real --steps 4 --new-tokens 24
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "mot_causality_cost.json"
PROMPT = "### Translate C++ to CUDA:\nvoid add(float* a, const float* b, int n) {\n  for (int i = 0; i < n; ++i) a[i] += b[i];\n}\n### CUDA:\n"


@contextlib.contextmanager
def old_rule():
    """The pre-issue-19 ``stable`` rule: whole-text peer tokens ending by the limit; decoding feeds peers
    the tokens of the whole text's tail and re-feeds the primary after a rollback."""
    from mot.thoughts import generation, model
    from mot.thoughts.alignment import VisibilityRule, visibility_mask

    def peer_views(self, sample_prompt, completion, primary_known_ends, peers):
        views = []
        for expert, weight, states in peers:
            rule = VisibilityRule(self.adapters[expert].tokenizer, sample_prompt, self.config.peer_visibility)
            limits = rule.limits(primary_known_ends, completion)
            views.append(model.PeerView(expert, visibility_mask(limits, states.ends), weight, states.hidden))
        return views

    saved_views, saved_exact = model.MixtureOfThoughts.peer_views, generation.FullDecoder.exact
    model.MixtureOfThoughts.peer_views = peer_views
    generation.FullDecoder.exact = property(lambda self: False)
    try:
        yield
    finally:
        model.MixtureOfThoughts.peer_views = saved_views
        generation.FullDecoder.exact = saved_exact


def time_training(task, batches, rule: str) -> float:
    from mot.training import build_optimizer

    optimizer = build_optimizer(task.param_groups(), learning_rate=1e-4, lr_scales=task.lr_scales)
    task.module.train()
    context = old_rule() if rule == "old" else contextlib.nullcontext()
    with context:
        torch.manual_seed(0)
        start = time.perf_counter()
        for batch in batches:
            loss, _ = task.loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def peer_work(model, pairs) -> dict:
    """Extra peer tokens (branches) and cut tokenisations of the exact rule, every expert as primary
    and every other as peer (deterministic: no routing involved)."""
    from mot.thoughts.alignment import encode_pair, known_ends

    whole = branch = cuts = samples = 0
    tokenise_s = 0.0
    for pair in pairs:
        for primary in range(model.num_experts):
            tok = encode_pair(model.adapters[primary].tokenizer, pair.prompt, pair.target)
            for peer in range(model.num_experts):
                if peer == primary:
                    continue
                states = model.compute_peer_states(peer, [pair.prompt], [pair.target])[0]
                start = time.perf_counter()
                view = model.peer_views(pair.prompt, pair.target, known_ends(tok), [(peer, torch.tensor(1.0), states)])[0]
                tokenise_s += time.perf_counter() - start
                whole += len(states.tokens)
                branch += view.visible.shape[1] - len(states.tokens)
                cuts += len(set(view.visible.sum(1).tolist()))
                samples += 1
    return {"peer_tokens_whole_text": whole, "branch_tokens": branch, "branch_tokens_per_peer_token": branch / whole,
            "distinct_cuts_per_sample_and_peer": cuts / samples,
            "peer_views_seconds_per_sample_and_peer": tokenise_s / samples}


def time_decoding(model, experts, new_tokens: int, rule: str) -> tuple[float, list[int], dict]:
    from mot.thoughts import FullDecoder, FullDecodeStats

    weights = torch.full((len(experts),), 1.0 / len(experts))
    context = old_rule() if rule == "old" else contextlib.nullcontext()
    with context, torch.no_grad():
        decoder = FullDecoder(model, PROMPT, experts, weights)
        logits = decoder.prefill()
        start = time.perf_counter()
        for _ in range(new_tokens):
            decoder.accept(int(torch.argmax(logits)))
            logits = decoder.advance()
        seconds = (time.perf_counter() - start) / new_tokens
    stats: FullDecodeStats = decoder.stats
    return seconds, decoder.generated, {"peer_rollbacks": stats.peer_rollbacks, "primary_refeeds": stats.primary_refeeds,
                                        "retokenisations": stats.tail_retokenisations}


def load_set(name: str):
    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig

    if name == "tiny":
        from mot.testing import build_tiny_experts, load_tiny_expert

        families = ["gpt2", "llama", "qwen2"]
        root = os.environ.get("MOT_TINY_EXPERTS_DIR") or Path(tempfile.gettempdir()) / "mot-bench-tiny"
        built = build_tiny_experts(root, families)
        experts, specs = [load_tiny_expert(built[f]) for f in families], families
        config = MoTConfig(num_stacks=2, top_k=3, interaction_heads=4, router_hidden_dim=32, dropout=0.0,
                           lambda_consistency=0.0)
    else:
        from mot.experts.resolve import resolve_expert

        specs = ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma-3-270m"]
        experts = [resolve_expert(s) for s in specs]
        config = MoTConfig(num_stacks=2, top_k=3, shared_dim=256, interaction_heads=4, router_hidden_dim=64,
                           dropout=0.0, lambda_consistency=0.0)
    torch.manual_seed(0)
    model = MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts], config, expert_specs=specs,
                              encoder=HashingEncoder(64))
    with torch.no_grad():  # open gates: the interaction is computed either way, but make it matter
        for layer in model.interactions:
            for gate in layer.gates:
                gate.fill_(0.5)
    return model


def bench(name: str, args, pairs) -> dict:
    from mot.thoughts.training import MoTTrainTask

    model = load_set(name)
    task = MoTTrainTask(model)
    batches = [task.collate(pairs[i:i + args.batch_size]) for i in range(0, args.steps * args.batch_size, args.batch_size)]
    times: dict[str, list[float]] = {"old": [], "new": []}
    time_training(task, batches[:1], "new")  # warm-up
    for _ in range(args.repeats):
        for rule in ("old", "new"):
            times[rule].append(time_training(task, batches, rule))
    train = {rule: min(v) for rule, v in times.items()}
    work = peer_work(model.eval(), pairs[:args.work_samples])
    decode: dict[str, dict] = {}
    experts = list(range(model.num_experts))
    for rule in ("old", "new"):
        time_decoding(model.eval(), experts, 2, rule)  # warm-up
    for _ in range(args.repeats):
        for rule in ("old", "new"):
            seconds, generated, stats = time_decoding(model.eval(), experts, args.new_tokens, rule)
            if rule not in decode or seconds < decode[rule]["seconds_per_token"]:
                decode[rule] = {"seconds_per_token": seconds, **stats}
    result = {"experts": list(model.expert_specs), "batch_size": args.batch_size, "steps": args.steps,
              "repeats": args.repeats,
              "train_step_seconds": {r: s / args.steps for r, s in train.items()},
              "train_ratio_new_over_old": train["new"] / train["old"],
              "peer_work": work,
              "decode": decode,
              "decode_ratio_new_over_old": decode["new"]["seconds_per_token"] / decode["old"]["seconds_per_token"],
              "load_avg": os.getloadavg()}
    print(f"[{name}] train new/old {result['train_ratio_new_over_old']:.3f}, decode new/old "
          f"{result['decode_ratio_new_over_old']:.3f}, branch tokens per peer token "
          f"{work['branch_tokens_per_peer_token']:.4f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="tiny,real", help="comma-separated: tiny (gpt2+llama+qwen2), real "
                                                           "(SmolLM2 + Qwen2.5-Coder + Gemma-3)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--work-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from mot.thoughts.data import stdlib_qa_pairs

    pairs = stdlib_qa_pairs(limit=max(args.steps * args.batch_size, args.work_samples))
    results = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
               "data": "stdlib docstring Q&A pairs (mot.thoughts.data.stdlib_qa_pairs)", "sets": {}}
    for name in args.sets.split(","):
        results["sets"][name] = bench(name, args, pairs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: {m: v[m] for m in ("train_ratio_new_over_old", "decode_ratio_new_over_old")}
                      for k, v in results["sets"].items()}, indent=2))


if __name__ == "__main__":
    main()
