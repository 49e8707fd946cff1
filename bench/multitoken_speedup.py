"""Multi-token heads on a real small backbone: accepted tokens per pass, per-head acceptance, wall-clock
speedup over the backbone's own cached greedy ``generate()``, and exactness; plus ``verify=False`` quality.

Trains heads (stage 1 + stage 2 self-distillation) on Python standard-library sources, evaluates on other,
held-out stdlib files.  One run, side by side, CPU fp32.  Writes ``bench/results/multitoken_speedup.json``.

    python bench/multitoken_speedup.py [--model smollm2-135m] [--train 120] [--eval 16] [--new-tokens 64]
        [--head-type residual|layer] [--tree 3x2 4x2 ...] [--lookup 5] [--ckpt runs/.../s2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sysconfig
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "multitoken_speedup.json"


def stdlib_examples(files: list[Path], count: int, prompt_chars: int, response_chars: int, seed: int,
                    per_file: int = 3):
    """(question, response) pairs cut from source files: a prompt of code and the code that follows it;
    up to ``per_file`` windows from each file, files in a seeded random order."""
    from mot.multitoken import Example

    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=rng).tolist()
    out = []
    for index in order:
        text = files[index].read_text(encoding="utf-8", errors="replace")
        if len(text) < prompt_chars + response_chars + 10:
            continue
        for _ in range(per_file):
            start = int(torch.randint(0, len(text) - prompt_chars - response_chars, (1,), generator=rng))
            start = text.rfind("\n", 0, start) + 1  # start on a line boundary
            out.append(Example(text[start:start + prompt_chars],
                               text[start + prompt_chars:start + prompt_chars + response_chars], len(out) + 1))
        if len(out) >= count:
            break
    return out[:count]


def _tree_spec(spec: str) -> tuple[int, int]:
    """``"6x3"`` -> (6 nodes, width 3); ``"6"`` -> 6 nodes at the decoder's default width."""
    from mot.multitoken.decoding import TREE_WIDTH

    budget, _, width = spec.partition("x")
    try:
        return int(budget), int(width or TREE_WIDTH)
    except ValueError:
        raise SystemExit(f"--tree takes NxW (nodes x width), e.g. 6x3; got {spec!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--k-max", type=int, default=4)
    parser.add_argument("--stage1-epochs", type=float, default=1.0)
    parser.add_argument("--stage2-epochs", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--feature-weight", type=float, default=0.0)
    parser.add_argument("--draft-vocab", type=int, default=8192, help="heads score this many frequent tokens (0: all)")
    parser.add_argument("--no-token-conditioning", action="store_true", help="plain Medusa heads (h_t only)")
    parser.add_argument("--no-chain-conditioning", action="store_true",
                        help="head h reads only t+1, not heads 1..h-1's drafts")
    parser.add_argument("--self-distill", default="generate", choices=["generate", "chain"])
    parser.add_argument("--untie", action="store_true", help="each head trains its own output projection")
    parser.add_argument("--head-layers", type=int, default=1)
    parser.add_argument("--head-type", default="residual", choices=["residual", "layer"],
                        help="layer: heads are the steps of one EAGLE-style draft layer over the sequence")
    parser.add_argument("--threshold", type=float, default=0.0, help="draft a head only while P(accept) >= this")
    parser.add_argument("--greedy-batch", type=int, default=16)
    parser.add_argument("--train-positions", type=int, default=0, help="CE on at most this many steps per batch (0: all)")
    parser.add_argument("--per-file", type=int, default=3, help="training windows cut from each source file")
    parser.add_argument("--prompt-chars", type=int, default=240)
    parser.add_argument("--response-chars", type=int, default=200)
    parser.add_argument("--lookup", type=int, default=0,
                        help="also evaluate heads + prompt lookup (up to N tokens) and HF's prompt-lookup generate()")
    parser.add_argument("--tree", nargs="*", default=[], metavar="NxW",
                        help="also evaluate tree drafting: N nodes, W best paths per depth (e.g. 3x2 6x3)")
    parser.add_argument("--no-skinny", action="store_true",
                        help="verification passes on PyTorch's own linear path instead of mot.experts.skinny")
    parser.add_argument("--out", default="runs/bench-multitoken")
    parser.add_argument("--ckpt", default=None, help="Evaluate this trained checkpoint instead of training.")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args()
    given = {k: v for k, v in vars(args).items() if v != parser.get_default(k)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    from mot.experts import skinny
    from mot.experts.resolve import resolve_expert
    from mot.generation import GenerationParams
    from mot.multitoken import (
        CurriculumConfig,
        DecodeStats,
        MultiTokenConfig,
        MultiTokenModel,
        decode_tokens,
        load_multitoken,
        train_curriculum,
    )

    t0 = time.perf_counter()
    backbone, tokenizer = resolve_expert(args.model, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    train_files, eval_files = files[::2], files[1::2]  # held out: different files
    train = stdlib_examples(train_files, args.train, args.prompt_chars, args.response_chars, seed=0,
                            per_file=args.per_file)
    held_out = stdlib_examples(eval_files, args.eval, args.prompt_chars, args.response_chars, seed=1)

    torch.manual_seed(0)
    config = MultiTokenConfig(num_heads=args.heads, k_max=args.k_max, feature_weight=args.feature_weight,
                              train_positions=args.train_positions or None, draft_vocab_size=args.draft_vocab or None,
                              token_conditioning=not args.no_token_conditioning, untie_heads=args.untie,
                              chain_conditioning=not args.no_chain_conditioning,
                              head_layers=args.head_layers, draft_threshold=args.threshold,
                              head_type=args.head_type)
    model = MultiTokenModel(backbone, tokenizer, config, backbone_spec=args.model)
    cfg = CurriculumConfig(stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs,
                           batch_size=args.batch, learning_rate=args.lr, max_length=args.max_length, device="cpu",
                           greedy_max_new_tokens=args.new_tokens, progress=False, log_every=1,
                           cache_hidden=True, greedy_batch=args.greedy_batch,
                           self_distill=args.self_distill)
    t0 = time.perf_counter()
    if args.ckpt is None:
        exported = train_curriculum(model, train, args.out, cfg)
        args.ckpt = str(exported["s2"])
    train_s = time.perf_counter() - t0
    model = load_multitoken(args.ckpt, backbone=(backbone, tokenizer))  # installs the skinny path (inert)
    model.config.draft_threshold = args.threshold  # a decoding setting: may differ from the training run's
    trained_on = model.meta.get("metrics", {})

    params = GenerationParams(max_new_tokens=args.new_tokens)
    verified, lossy, looked = DecodeStats(), DecodeStats(lossy=True), DecodeStats()
    base_s = same_s = mt_s = look_s = hf_look_s = hf_look_same_s = 0.0
    exact = look_exact = hf_look_exact = hf_look_same_exact = agree = agree_total = 0
    use_skinny = not args.no_skinny
    trees = [_tree_spec(spec) for spec in args.tree]
    tree_stats = {t: DecodeStats() for t in trees}
    tree_s = dict.fromkeys(trees, 0.0)
    tree_exact = dict.fromkeys(trees, 0)
    look_tree, look_tree_s, look_tree_exact = DecodeStats(), 0.0, 0
    lossy_nll, lossy_count = 0.0, 0
    per_prompt = []
    pad = tokenizer.pad_token_id or 0
    for example in held_out:
        ids = tokenizer(example.question, return_tensors="pt").input_ids
        t = time.perf_counter()
        with torch.no_grad():
            ref = backbone.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=args.new_tokens, pad_token_id=pad)
        base = time.perf_counter() - t
        reference = ref[0, ids.shape[1]:].tolist()
        # like for like: the same generate() with the linear path the verified decoder uses
        t = time.perf_counter()
        with torch.no_grad(), skinny.skinny_rows(use_skinny):
            same = backbone.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.new_tokens, pad_token_id=pad)
        same_t = time.perf_counter() - t
        if same[0, ids.shape[1]:].tolist() != reference:
            logging.warning("prompt %d: generate() on the skinny path differs from stock", len(per_prompt) + 1)
        stats = DecodeStats()
        t = time.perf_counter()
        tokens = list(decode_tokens(model, ids, params, stats=stats, skinny_rows=use_skinny))
        ours = time.perf_counter() - t
        base_s, same_s, mt_s = base_s + base, same_s + same_t, mt_s + ours
        verified.merge(stats)
        exact += tokens == reference
        row = {"tokens": len(tokens), "tokens_per_pass": stats.tokens_per_pass, "speedup": base / ours,
               "speedup_same_path": same_t / ours, "exact": tokens == reference}
        for budget, width in trees:
            stats_t = DecodeStats()
            t = time.perf_counter()
            tokens_t = list(decode_tokens(model, ids, params, stats=stats_t, skinny_rows=use_skinny, tree=budget,
                                          tree_width=width))
            tree_s[budget, width] += time.perf_counter() - t
            tree_stats[budget, width].merge(stats_t)
            tree_exact[budget, width] += tokens_t == reference
            row[f"tree_{budget}x{width}_tokens_per_pass"] = stats_t.tokens_per_pass
        if args.lookup:
            # the heads plus prompt lookup, and HF's own prompt-lookup decoding for reference
            stats_l = DecodeStats()
            t = time.perf_counter()
            tokens_l = list(decode_tokens(model, ids, params, stats=stats_l, lookup=args.lookup,
                                          skinny_rows=use_skinny))
            ours_l = time.perf_counter() - t
            hf_times, hf_exact = [], []
            for path in (False, use_skinny):  # HF's prompt lookup on the stock path, then on ours
                t = time.perf_counter()
                with torch.no_grad(), skinny.skinny_rows(path):
                    hf = backbone.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=args.new_tokens, pad_token_id=pad,
                                           prompt_lookup_num_tokens=args.lookup)
                hf_times.append(time.perf_counter() - t)
                hf_exact.append(hf[0, ids.shape[1]:].tolist() == reference)
            hf_l, hf_l_same = hf_times
            look_s, hf_look_s, hf_look_same_s = look_s + ours_l, hf_look_s + hf_l, hf_look_same_s + hf_l_same
            hf_look_exact += hf_exact[0]
            hf_look_same_exact += hf_exact[1]
            looked.merge(stats_l)
            look_exact += tokens_l == reference
            if trees:  # lookup with the first tree: what `mot serve` runs by default
                stats_lt = DecodeStats()
                t = time.perf_counter()
                tokens_lt = list(decode_tokens(model, ids, params, stats=stats_lt, lookup=args.lookup,
                                               skinny_rows=use_skinny, tree=trees[0][0], tree_width=trees[0][1]))
                look_tree_s += time.perf_counter() - t
                look_tree.merge(stats_lt)
                look_tree_exact += tokens_lt == reference
            row.update({"lookup_tokens_per_pass": stats_l.tokens_per_pass, "lookup_speedup": base / ours_l,
                        "lookup_exact": tokens_l == reference, "hf_prompt_lookup_speedup": base / hf_l})
        per_prompt.append(row)
        # verify=False: lossy emission, scored against the backbone
        loose = DecodeStats(lossy=True)
        unverified = list(decode_tokens(model, ids, params, verify=False, stats=loose, skinny_rows=use_skinny))
        lossy.merge(loose)
        n = min(len(unverified), len(reference))
        agree += sum(a == b for a, b in zip(unverified[:n], reference[:n], strict=True))
        agree_total += max(len(unverified), len(reference))
        if unverified:
            seq = torch.tensor([ids[0].tolist() + unverified])
            with torch.no_grad():
                logits = backbone(seq).logits[0, ids.shape[1] - 1:-1]
            lossy_nll += torch.nn.functional.cross_entropy(logits, torch.tensor(unverified), reduction="sum").item()
            lossy_count += len(unverified)
        logging.info("prompt %d: %s", len(per_prompt), {k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in row.items()})
    # backbone's own perplexity on its greedy outputs is the reference point for the lossy perplexity
    result = {
        "backbone": args.model, "device": "cpu", "dtype": "float32", "threads": args.threads,
        "linear_path": "skinny" if use_skinny else "stock",
        "heads": args.heads, "k_max": args.k_max, "train_examples": len(train), "eval_prompts": len(held_out),
        "new_tokens": args.new_tokens, "train_seconds": train_s, "load_seconds": load_s,
        "checkpoint": args.ckpt, "checkpoint_stage": model.meta.get("stage"), "checkpoint_metrics": trained_on,
        "verified": {
            "accepted_tokens_per_pass": verified.tokens_per_pass,
            "head_acceptance": {str(h): a for h, a in verified.head_acceptance.items()},
            "speedup_vs_generate": base_s / mt_s, "generate_seconds": base_s, "multitoken_seconds": mt_s,
            "speedup_vs_generate_same_path": same_s / mt_s, "generate_same_path_seconds": same_s,
            "exact_match_rate": exact / max(len(held_out), 1),
        },
        **{f"verified_tree_{budget}x{width}": {
            "tree_nodes": budget, "tree_width": width,
            "accepted_tokens_per_pass": tree_stats[budget, width].tokens_per_pass,
            "head_acceptance": {str(h): a for h, a in tree_stats[budget, width].head_acceptance.items()},
            "speedup_vs_generate": base_s / tree_s[budget, width],
            "speedup_vs_generate_same_path": same_s / tree_s[budget, width],
            "multitoken_seconds": tree_s[budget, width],
            "exact_match_rate": tree_exact[budget, width] / max(len(held_out), 1),
        } for budget, width in trees},
        **({"verified_with_lookup": {
            "lookup_tokens": args.lookup,
            "accepted_tokens_per_pass": looked.tokens_per_pass,
            "head_acceptance": {str(h): a for h, a in looked.head_acceptance.items()},
            "passes_drafted_by_lookup": looked.lookup_passes / max(looked.backbone_passes, 1),
            "lookup_draft_acceptance": looked.lookup_accepted / max(looked.lookup_drafted, 1),
            "speedup_vs_generate": base_s / look_s, "multitoken_seconds": look_s,
            "exact_match_rate": look_exact / max(len(held_out), 1),
            "hf_prompt_lookup_speedup_vs_generate": base_s / hf_look_s, "hf_prompt_lookup_seconds": hf_look_s,
            "hf_prompt_lookup_same_path_speedup_vs_generate": base_s / hf_look_same_s,
            "hf_prompt_lookup_same_path_seconds": hf_look_same_s,
            "hf_prompt_lookup_same_path_exact_match_rate": hf_look_same_exact / max(len(held_out), 1),
            "hf_prompt_lookup_exact_match_rate": hf_look_exact / max(len(held_out), 1),
        }} if args.lookup else {}),
        **({f"verified_with_lookup_tree_{trees[0][0]}x{trees[0][1]}": {
            "accepted_tokens_per_pass": look_tree.tokens_per_pass,
            "passes_drafted_by_lookup": look_tree.lookup_passes / max(look_tree.backbone_passes, 1),
            "speedup_vs_generate": base_s / look_tree_s,
            "speedup_vs_generate_same_path": same_s / look_tree_s, "multitoken_seconds": look_tree_s,
            "exact_match_rate": look_tree_exact / max(len(held_out), 1),
        }} if args.lookup and trees else {}),
        "unverified_lossy": {
            "tokens_per_pass": lossy.tokens_per_pass,
            "token_agreement_with_backbone": agree / max(agree_total, 1),
            "perplexity_under_backbone": float(torch.tensor(lossy_nll / max(lossy_count, 1)).exp()),
        },
        "per_prompt": per_prompt,
        "command": "python bench/multitoken_speedup.py " + " ".join(  # the options given (not defaults)
            f"--{k.replace('_', '-')}" if v is True else
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in given.items()),
    }
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(results.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(results)  # a killed run never leaves a half-written results file
    print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}, indent=2))


if __name__ == "__main__":
    main()
