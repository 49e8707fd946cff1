"""The MoT comparison table: MoT against its capacity control, learned routing alone, RouterDC, cluster
routing (Avengers-style), each expert alone and the oracle, on real benchmark files, with paired
bootstrap 95% confidence intervals.

Every method is trained on the same items: the training pairs of the MoT run config (``--config``;
``mot.thoughts.data.load_splits`` rebuilds them exactly).  The baseline routers learn from each expert's
per-item correctness on those items (scored once, cached under the results directory).  Evaluation
items never overlap them: GSM8K test; MMLU and CMMLU ``test[eval]`` (the training part ``test[train]``
is a fixed 30% of the test items, see ``mot.data.sampling``).  ``--limit`` samples each benchmark
across subjects (seed ``--limit-seed``).

Rows: each expert alone; ``mot:full`` (MoT, interaction) and ``mot:fast`` (its router alone, top-1:
learned routing without interaction); the capacity controls' two modes each when ``--control`` (the
same MoT trained identically with ``peers: self``) and ``--adapter`` (``peers: adapter``: routing plus an
MLP adapter of MoT's trainable size on the routed primary, no peers) are given; ``routerdc`` and
``cluster``, and on generative benchmarks ``cluster:voteN`` (``--vote N``: Avengers' repeated-sampling
vote over the routed expert's N samples); ``oracle`` (best expert per item).  Routed rows score each item with the routed expert's own scorer (memoized: the same
numbers as that expert's row).  The differences are ``mot:full`` minus each other row, per benchmark.

Per-item results live under ``bench/results/<name>/`` (``run_evaluation``'s partial files), so a rerun
resumes; the summary is ``bench/results/<name>.json`` and ``bench/results/<name>.md``.

    mot thoughts train -c configs/mot_real_mixed.json
    mot thoughts train -c configs/mot_real_mixed_control.json
    python bench/mot_table.py --name mot_table_cpu --config configs/mot_real_mixed.json \\
        --mot runs/mot_real_mixed/final --control runs/mot_real_mixed_control/final \\
        --limit mmlu=60,cmmlu=60,gsm8k=8 --max-new-tokens 160
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = ROOT.parent / "shared" / "benchmarks"
EVAL_SPLIT = {"gsm8k": "test", "mmlu": "test[eval]", "cmmlu": "test[eval]", "humaneval": "test[eval]"}


def _limits(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="mot_table_cpu")
    parser.add_argument("--config", type=Path, required=True, help="the MoT run config (its training pairs)")
    parser.add_argument("--mot", type=Path, default=None, help="MoT checkpoint directory (omit: experts and routers "
                                                                 "only, to fill the per-item caches first)")
    parser.add_argument("--control", type=Path, default=None, help="capacity-control checkpoint (peers: self)")
    parser.add_argument("--adapter", type=Path, default=None, help="adapter capacity-control checkpoint (peers: adapter)")
    parser.add_argument("--vote", type=int, default=1, help="generative benchmarks: add a cluster row with Avengers' "
                                                            "repeated-sampling vote of N samples (1: none)")
    parser.add_argument("--limit", default="mmlu=60,cmmlu=60,gsm8k=8", help="items per benchmark, BENCH=N,...")
    parser.add_argument("--limit-seed", type=int, default=1234)
    parser.add_argument("--train-limit", default="", help="cap the routers' training items per benchmark, BENCH=N,... "
                                                          "(the first N of the MoT run's training items; default all)")
    parser.add_argument("--data", type=Path, default=BENCH_DATA, help="folder with gsm8k/, mmlu/, cmmlu/")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)

    from mot.config import load_config
    from mot.data import benchmark_spec, load_benchmark
    from mot.evaluation.baselines import expert_correctness, fit_router, routing_text
    from mot.evaluation.metrics import paired_bootstrap_ci
    from mot.evaluation.routed import RoutedModel, vote_options
    from mot.evaluation.runner import DEFAULT_MC_STYLE, read_partial, run_evaluation
    from mot.generation import GenerationParams
    from mot.loading import ModelPool, spec_source
    from mot.routing.checkpoint import is_router_checkpoint, load_router, save_router
    from mot.thoughts.data import load_splits
    from mot.thoughts.features import make_encoder
    from mot.thoughts.run_config import MoTRunConfig, resolve_paths

    started = time.perf_counter()
    limits = _limits(args.limit)
    train_limits = _limits(args.train_limit) if args.train_limit else {}
    work = args.out / args.name
    work.mkdir(parents=True, exist_ok=True)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    pool = ModelPool(device=args.device, dtype=args.dtype, batch_size=args.batch_size, memoize=True)

    # ---- the training items: exactly the MoT run's training pairs, mapped back to benchmark items
    cfg = resolve_paths(load_config(args.config, MoTRunConfig), args.config.resolve().parent)
    train_pairs, _, _ = load_splits(cfg.data)
    wanted: dict[str, set[str]] = {}
    for pair in train_pairs:
        bench, _, item_id = pair.id.partition(":")
        wanted.setdefault(bench, set()).add(item_id)
    train_sets = []
    for source in cfg.data.sources:
        if source.kind != "benchmark":
            continue
        items = load_benchmark(source.name, source.path, source.split, source.limit)
        spec = benchmark_spec(source.name)
        chosen = [it for it in items if str(it.id) in wanted.get(spec.name, set())]
        cap = train_limits.get(spec.name)
        chosen = chosen[:cap] if cap is not None else chosen
        if chosen:
            train_sets.append((spec.name, chosen))
    _log("training items: " + ", ".join(f"{b} {len(i)}" for b, i in train_sets))

    expert_specs = [e.spec for e in cfg.expert_models]
    mot_rows = pool.models("mot", str(args.mot)) if args.mot is not None else {}
    experts = {spec: pool.expert(spec) for spec in expert_specs}

    # ---- per-expert correctness on the training items (cached), then the baseline routers
    texts, rows = [], []
    for bench, items in train_sets:
        spec = benchmark_spec(bench)
        _log(f"expert correctness on {len(items)} {bench} training items")
        rows.append(expert_correctness(bench, items, experts, work / "train" / bench, params=params,
                                       batch_size=args.batch_size))
        texts += [routing_text(it, spec.task, DEFAULT_MC_STYLE.get(bench, "letters")) for it in items]
    correctness = torch.cat(rows)
    encoder = make_encoder(args.encoder)
    routers = {}
    for method, options in (("routerdc", {"steps": 300, "num_clusters": 8}), ("cluster", {"num_clusters": 8})):
        path = work / "routers" / method
        if not is_router_checkpoint(path):
            router, info = fit_router(method, encoder.encode(texts), correctness, **options)
            save_router(router, path, options, experts=expert_specs, encoder=args.encoder, method=method,
                        training_items={b: len(i) for b, i in train_sets}, fit=info)
            _log(f"{method} fitted: {info if method != 'cluster' else info['clusters']} ")
        routers[method] = load_router(path)[0]

    def route_with(router):
        def route(batch: list[str]) -> list[int]:
            with torch.no_grad():
                return [int(p) for p in router(encoder.encode(batch)).primary.tolist()]
        return route

    models = {spec: experts[spec] for spec in expert_specs}
    sources = {spec: spec_source(spec) for spec in expert_specs}  # a resume refuses rows whose weights changed
    for label, path in (("control", args.control), ("adapter", args.adapter), ("mot", args.mot)):
        if path is not None:
            rows = mot_rows if label == "mot" else pool.models(label, str(path))
            models.update(rows)
            sources.update(dict.fromkeys(rows, spec_source(str(path))))
    for method, router in routers.items():
        models[method] = RoutedModel(method, route_with(router), [experts[s] for s in expert_specs])
        sources[method] = spec_source(str(work / "routers" / method))

    # ---- evaluation, benchmark by benchmark (per-item files resume)
    table: dict[str, dict] = {}
    for bench, n in limits.items():
        spec = benchmark_spec(bench)
        data = args.data / bench if bench != "humaneval" else None
        items = load_benchmark(bench, data, EVAL_SPLIT.get(bench, spec.default_split), n,
                               sample_seed=args.limit_seed)
        bench_models = dict(models)
        voting = vote_options(spec.task, args.vote, temperature=0.7, top_p=0.95)
        if voting:
            bench_models[f"cluster:vote{args.vote}"] = RoutedModel(f"cluster:vote{args.vote}", route_with(routers["cluster"]),
                                                                   [experts[s] for s in expert_specs], **voting)
        _log(f"{bench}: {len(items)} items x {len(bench_models)} rows")
        t0 = time.perf_counter()
        res = run_evaluation(bench, bench_models, items, work / "eval" / bench, batch_size=args.batch_size,
                             params=params, progress=False, report=False,
                             sources={name: sources[name] for name in bench_models if name in sources})
        metric = res["primary_metric"]
        per_item = {}
        for name, entry in res["models"].items():
            records = read_partial(work / "eval" / bench / entry["partial_file"])
            per_item[name] = [float(records[str(it.id)]["scores"].get(metric, 0.0)) for it in items]
        per_item["oracle"] = [max(per_item[s][i] for s in expert_specs) for i in range(len(items))]
        style = DEFAULT_MC_STYLE.get(bench, "letters")
        texts_b = [routing_text(it, spec.task, style) for it in items]
        routed = {}
        for name, m in bench_models.items():
            router = m if isinstance(m, RoutedModel) else getattr(m, "routed", None)
            if isinstance(router, RoutedModel):
                # routed again here (the router only): items resumed from disk were never routed in this run
                picks = router.picks(texts_b)
                routed[name] = {s: sum(1 for p in picks if expert_specs[p] == s) for s in expert_specs}
        table[bench] = {
            "metric": metric, "num_items": len(items), "split": EVAL_SPLIT.get(bench, spec.default_split),
            "scores": {name: sum(v) / len(v) for name, v in per_item.items()},
            "ci_mot_full_minus": {name: paired_bootstrap_ci(per_item["mot:full"], v, resamples=args.resamples)
                                  for name, v in per_item.items() if name != "mot:full" and "mot:full" in per_item},
            "routing_counts": routed,
            "seconds": time.perf_counter() - t0,
        }
        _log(f"{bench}: " + ", ".join(f"{k} {v:.3f}" for k, v in table[bench]["scores"].items()))

    order = ([k for k in ("control:full", "control:fast") if args.control is not None]
             + [k for k in ("adapter:full", "adapter:fast") if args.adapter is not None]
             + ["mot:fast", "routerdc", "cluster", f"cluster:vote{args.vote}", *expert_specs, "oracle"])
    result = {
        "name": args.name, "config": str(args.config), "mot": str(args.mot) if args.mot else None,
        "control": str(args.control) if args.control else None,
        "adapter": str(args.adapter) if args.adapter else None, "vote": args.vote,
        "control_missing_reason": None if args.control else "no --control checkpoint given",
        "limits": limits, "limit_seed": args.limit_seed, "max_new_tokens": args.max_new_tokens,
        "training_items": {b: len(i) for b, i in train_sets}, "train_limits": train_limits, "experts": expert_specs,
        "threads": args.threads, "device": args.device, "seconds": time.perf_counter() - started,
        "benchmarks": table, "difference_order": order,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result) + "\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    benches = list(result["benchmarks"])
    rows = [n for n in ("mot:full", "control:full", "control:fast", "adapter:full", "adapter:fast", "mot:fast",
                        "routerdc", "cluster", f"cluster:vote{result.get('vote', 1)}", *result["experts"], "oracle")
            if any(n in result["benchmarks"][b]["scores"] for b in benches)]
    head = "| method | " + " | ".join(f"{b} ({result['benchmarks'][b]['metric']}, n={result['benchmarks'][b]['num_items']})"
                                        for b in benches) + " |"
    lines = [head, "|---|" + "---:|" * len(benches)]
    for name in rows:
        cells = [f"{100 * result['benchmarks'][b]['scores'][name]:.1f}" if name in result["benchmarks"][b]["scores"]
                 else "-" for b in benches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "MoT (full) minus each method, points, paired bootstrap 95% CI (capacity control first):", "",
              "| MoT full minus | " + " | ".join(benches) + " |", "|---|" + "---:|" * len(benches)]
    for name in result["difference_order"]:
        if not any(name in result["benchmarks"][b]["ci_mot_full_minus"] for b in benches):
            continue
        cells = []
        for b in benches:
            ci = result["benchmarks"][b]["ci_mot_full_minus"].get(name)
            cells.append("-" if ci is None else f"{100 * ci['diff']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if not result["control"]:
        lines += ["", f"Capacity control missing: {result['control_missing_reason']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
