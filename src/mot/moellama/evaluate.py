"""Evaluate a trained moellama and write a markdown report.

Measured: perplexity and next-token accuracy on the held-out documents of the training corpus (the
same seeded document split as training), generation samples for configurable prompts, two small
exact-answer tasks generated programmatically with known answers, and optionally real benchmarks
through ``mot.evaluation`` (``HFModel`` scores moellama like any HF causal LM).

* **letter counting**: ``How many times does the letter "r" appear in "strawberry"?`` -> ``3``
* **arithmetic**: ``What is 12 + 7?`` -> ``19`` (``+``, ``-``, ``*`` on small numbers)

Both are asked two-shot (two solved examples of the same kind first) and decoded greedily; the first
integer of the reply must equal the answer.

The report holds the architecture, total and *active* parameters (those one token uses: top_k of
num_experts routed experts), the training run (from the ``metrics.jsonl`` and ``training_summary.json``
saved with the model), the results, the samples and the plots (the Trainer's loss and routing PNGs, and
a validation perplexity/accuracy figure drawn here).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mot.generation import GenerationParams
from mot.io import write_text

DEFAULT_PROMPTS = ("ROMEO:\n", "First Citizen:\nBefore we proceed", "To be, or not to be", "KING HENRY V:\n")
WORDS = ("strawberry", "banana", "mississippi", "bookkeeper", "committee", "assessment", "parallel", "letter",
         "balloon", "coffee", "engineer", "tomorrow", "occurrence", "successful", "raspberry", "pepper")
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class TaskItem:
    kind: str  # "letter_counting" | "arithmetic"
    question: str
    answer: int


@dataclass
class EvalOptions:
    max_eval_windows: int | None = 256
    batch_size: int = 16
    tasks_per_kind: int = 20
    prompts: list[str] | None = None  # None: DEFAULT_PROMPTS
    benchmarks: list[str] = field(default_factory=list)
    benchmark_path: Path | None = None
    benchmark_limit: int = 50
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0


@dataclass
class EvalReport:
    path: Path
    metrics: dict
    results: dict


# ------------------------------------------------------------------------------------------ the tasks


def letter_counting_items(n: int, seed: int = 0) -> list[TaskItem]:
    """``n`` letter-counting questions; the letter is in the word three times out of four."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        word = rng.choice(WORDS)
        letter = rng.choice(sorted(set(word))) if rng.random() < 0.75 else rng.choice(
            sorted(set("abcdefghijklmnopqrstuvwxyz") - set(word)))
        items.append(TaskItem("letter_counting", f'How many times does the letter "{letter}" appear in "{word}"?',
                              word.count(letter)))
    return items


def arithmetic_items(n: int, seed: int = 0) -> list[TaskItem]:
    """``n`` questions ``a op b`` with ``op`` in + - * (operands up to 20, or 12 for products)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        op = rng.choice("+-*")
        hi = 12 if op == "*" else 20
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        items.append(TaskItem("arithmetic", f"What is {a} {op} {b}?", answer))
    return items


def task_prompt(item: TaskItem, shots: list[TaskItem]) -> str:
    lines = [f"Q: {s.question}\nA: {s.answer}\n" for s in shots]
    return "".join(lines) + f"Q: {item.question}\nA:"


def first_integer(text: str) -> int | None:
    match = _INT.search(text)
    return int(match.group()) if match else None


def score_tasks(generator, items: list[TaskItem], shots: list[TaskItem], batch_size: int = 16) -> list[dict]:
    """Greedy two-shot answers; ``correct`` when the reply's first integer is the answer."""
    params = GenerationParams(max_new_tokens=6, temperature=0.0, stop=["\n"])
    prompts = [task_prompt(it, shots) for it in items]
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        replies += generator.generate(prompts[start:start + batch_size], params)
    return [{"question": it.question, "answer": it.answer, "reply": r.strip(),
             "correct": first_integer(r) == it.answer} for it, r in zip(items, replies, strict=True)]


# ------------------------------------------------------------------------------------ language model


def heldout_windows(model_dir: Path, cfg, tokenizer, limit: int | None):
    """Validation windows of the corpus the model was trained on (its run config when saved with it)."""
    from mot.moellama.config import MoeLlamaFileConfig
    from mot.moellama.data import load_documents, prepare_data
    from mot.moellama.train import evenly_spaced

    run_config = model_dir / "run_config.json"
    if run_config.is_file():
        cfg = MoeLlamaFileConfig.model_validate(json.loads(run_config.read_text(encoding="utf-8")))
    t = cfg.training
    seq_len = min(t.seq_len, _max_seq_len(model_dir, t.seq_len))
    cache = Path(cfg.paths.output_dir) / "cache"
    documents = load_documents(t.dataset, cache_dir=cache)
    _, val = prepare_data(documents, tokenizer, cache, seq_len, t.val_fraction, t.seed)
    return evenly_spaced(val, limit), t.dataset


def _max_seq_len(model_dir: Path, default: int) -> int:
    config = model_dir / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings", default))
    return default


def language_model_metrics(model, windows, batch_size: int = 16) -> dict:
    """Mean next-token loss, perplexity and accuracy over ``windows`` (every target token counts once)."""
    import torch

    from mot.moellama.task import MoeLlamaTask

    task = MoeLlamaTask(model)
    device = next(task.module.parameters()).device
    items = [windows[i] for i in range(len(windows))]
    batches = ({k: torch.stack([it[k] for it in items[s:s + batch_size]]).to(device) for k in ("input_ids", "targets")}
               for s in range(0, len(items), batch_size))
    with torch.no_grad():
        m = task.evaluate(batches)
    return {"val_loss": m["val_loss"], "perplexity": m["val_perplexity"], "token_accuracy": m["val_token_accuracy"],
            "eval_tokens": len(items) * (len(items[0]["targets"]) if items else 0)}


def parameter_breakdown(module) -> dict[str, int]:
    """Parameters by part: embedding (tied with the head when so configured), attention, router, experts,
    shared expert, norms; plus total and active."""
    parts = {"embedding": 0, "attention": 0, "router": 0, "experts": 0, "shared_expert": 0, "norms": 0, "lm_head": 0}
    seen = set()
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        key = ("embedding" if name.startswith("embed") else "lm_head" if name.startswith("lm_head")
               else "attention" if ".attn." in name else "router" if ".router." in name
               else "experts" if ".experts." in name else "shared_expert" if ".shared." in name else "norms")
        parts[key] += p.numel()
    return {k: v for k, v in parts.items() if v} | {"total": module.num_parameters(),
                                                    "active": module.num_parameters(active=True)}


# -------------------------------------------------------------------------------------------- driver


def evaluate_checkpoint(model_path, cfg, options: EvalOptions, output: Path | None = None,
                        device: str | None = None) -> EvalReport:
    """Evaluate the model at ``model_path`` (any directory ``checkpoint.load_model`` takes) and write the
    report to ``output`` (default ``<model dir>/report.md``) with ``report.json`` and figures beside it."""
    from mot.moellama.checkpoint import load_model
    from mot.moellama.generate import MoeLlamaGenerator

    started = time.perf_counter()
    model, tokenizer, model_dir = load_model(model_path, device=device)
    module = model.model
    generator = MoeLlamaGenerator(model, tokenizer, name=str(model_dir))
    output = Path(output) if output is not None else model_dir / "report.md"
    output.parent.mkdir(parents=True, exist_ok=True)

    windows, dataset = heldout_windows(model_dir, cfg, tokenizer, options.max_eval_windows)
    lm = language_model_metrics(model, windows, options.batch_size)

    n = options.tasks_per_kind
    tasks = {}
    for kind, make in (("letter_counting", letter_counting_items), ("arithmetic", arithmetic_items)):
        shots, items = make(2, seed=options.seed + 1000), make(n, seed=options.seed)
        rows = score_tasks(generator, items, shots, options.batch_size) if n else []
        tasks[kind] = {"accuracy": sum(r["correct"] for r in rows) / max(len(rows), 1), "items": rows}

    sample_params = GenerationParams(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                     top_k=options.top_k, top_p=options.top_p, seed=options.seed)
    prompts = list(options.prompts or DEFAULT_PROMPTS)
    samples = [{"prompt": p, "completion": c} for p, c in zip(prompts, generator.generate(prompts, sample_params),
                                                               strict=True)]
    benchmarks = run_benchmarks(model, tokenizer, options, output.parent / f"{output.stem}-benchmarks")

    metrics = {**lm, "letter_counting": tasks["letter_counting"]["accuracy"],
               "arithmetic": tasks["arithmetic"]["accuracy"]}
    results = {
        "model": str(model_dir), "dataset": dataset, "metrics": metrics, "tasks": tasks, "samples": samples,
        "sample_params": sample_params.__dict__, "benchmarks": benchmarks,
        "architecture": module.cfg.model_dump(), "parameters": parameter_breakdown(module),
        "training": training_record(model_dir), "eval_seconds": time.perf_counter() - started,
    }
    figures = write_figures(model_dir, output.parent, output.stem, results)
    write_text(output, render_report(results, figures))
    write_text(output.parent / f"{output.stem}.json", json.dumps(results, indent=2, default=str) + "\n")
    return EvalReport(output, metrics, results)


def run_benchmarks(model, tokenizer, options: EvalOptions, directory: Path) -> dict:
    """Each requested ``mot.data`` benchmark through ``mot.evaluation.runner`` (its metrics per benchmark)."""
    if not options.benchmarks:
        return {}
    from mot.data import benchmark_spec, load_benchmark
    from mot.evaluation.hf_model import HFModel
    from mot.evaluation.runner import run_evaluation

    specs = [benchmark_spec(name) for name in options.benchmarks]  # unknown names fail before any work
    scorer = HFModel(model, tokenizer, name="moellama", batch_size=options.batch_size)
    params = GenerationParams(max_new_tokens=options.max_new_tokens, temperature=0.0)
    out = {}
    for spec in specs:
        items = load_benchmark(spec.name, options.benchmark_path, limit=options.benchmark_limit)
        res = run_evaluation(spec.name, {"moellama": scorer}, items, directory / spec.name, params=params,
                             resume=False, progress=False, report=False, batch_size=options.batch_size)
        out[spec.name] = {"metrics": res["models"]["moellama"]["metrics"], "num_items": res["num_items"],
                          "primary_metric": res["primary_metric"]}
    return out


def training_record(model_dir: Path) -> dict:
    """What the model directory says about its training run (empty for a bare checkpoint)."""
    from mot.moellama.train import SUMMARY_FILE
    from mot.training.tracking import read_metrics

    summary_file = model_dir / SUMMARY_FILE
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    records = read_metrics(model_dir)
    run_config = model_dir / "run_config.json"
    train = [r for r in records if r.get("loss") is not None]
    return {
        "summary": summary,
        "config": json.loads(run_config.read_text()).get("training") if run_config.is_file() else None,
        "final_train_loss": train[-1]["loss"] if train else None,
        "val_history": [{k: r[k] for k in ("step", "val_loss", "val_perplexity", "val_token_accuracy") if k in r}
                        for r in records if "val_loss" in r],
    }


# --------------------------------------------------------------------------------------------- report


def write_figures(model_dir: Path, out_dir: Path, stem: str, results: dict) -> dict[str, str]:
    """The Trainer's PNGs (copied beside the report) and a validation perplexity/accuracy figure."""
    figures = {}
    for name in ("loss.png", "routing.png"):
        src = model_dir / name
        if src.is_file():
            dst = out_dir / name
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            figures[name.removesuffix(".png")] = name
    history = results["training"]["val_history"]
    final = results["metrics"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_ppl, ax_acc = fig.subplots(1, 2)
    steps = [h["step"] for h in history if "val_perplexity" in h]
    if steps:
        ax_ppl.plot(steps, [h["val_perplexity"] for h in history if "val_perplexity" in h], "o-", label="during training")
        ax_acc.plot(steps, [h["val_token_accuracy"] for h in history if "val_token_accuracy" in h], "o-",
                    label="during training")
    last = steps[-1] if steps else 0
    ax_ppl.plot([last], [final["perplexity"]], "r*", markersize=12, label="this evaluation")
    ax_acc.plot([last], [final["token_accuracy"]], "r*", markersize=12, label="this evaluation")
    ax_ppl.set(title="validation perplexity", xlabel="step", yscale="log")
    ax_acc.set(title="next-token accuracy", xlabel="step")
    for ax in (ax_ppl, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    name = f"{stem}-perplexity.png"
    fig.savefig(out_dir / name)
    figures["perplexity"] = name
    return figures


def _table(rows: list[tuple], head: tuple) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])


def render_report(results: dict, figures: dict[str, str]) -> str:
    arch, params, metrics = results["architecture"], results["parameters"], results["metrics"]
    training = results["training"]
    summary = training["summary"]
    out = [f"# moellama evaluation: `{results['model']}`", ""]

    out += ["## Architecture", "",
            f"A pre-norm decoder of {arch['num_layers']} blocks (RMSNorm, RoPE, grouped-query attention with "
            f"{arch['num_heads']} query / {arch['num_kv_heads'] or arch['num_heads']} key-value heads, then a "
            f"Mixture-of-Experts feed-forward layer: {arch['num_experts']} SwiGLU experts, top-{arch['top_k']} "
            f"routing{', plus one always-on shared expert' if arch['shared_expert'] else ''}).", "",
            _table([(k, _fmt(v)) for k, v in arch.items()], ("setting", "value")), "",
            "**Parameters**: "
            f"{params['total']:,} total, **{params['active']:,} active per token** "
            f"({params['active'] / params['total']:.0%}).", "",
            _table([(k, f"{v:,}") for k, v in params.items() if k not in ("total", "active")], ("part", "parameters")),
            ""]

    out += ["## Training", ""]
    if summary:
        cfg = training["config"] or {}
        rows = [("dataset", summary.get("dataset")), ("steps", summary.get("steps")),
                ("tokens seen", summary.get("tokens_seen")), ("tokens per step", summary.get("tokens_per_step")),
                ("learning rate", cfg.get("learning_rate")), ("device / precision",
                                                              f"{summary.get('device')} / {summary.get('precision')}"),
                ("processes", summary.get("world_size")), ("final train loss", training["final_train_loss"]),
                ("best val loss", f"{_fmt(summary.get('best_val_loss'))} (step {summary.get('best_step')})"),
                ("weights saved", summary.get("saved_weights")),
                ("training throughput", f"{_fmt(summary.get('tokens_per_s'), 4)} tokens/s"),
                ("wall time", f"{summary.get('wall_time_s', 0):.0f} s")]
        out += [_table([(k, _fmt(v)) for k, v in rows], ("", "")), ""]
    else:
        out += ["No training records next to this model (a bare checkpoint).", ""]
    for key, caption in (("loss", "Training and validation loss"), ("routing", "Share of tokens per expert")):
        if key in figures:
            out += [f"![{caption}]({figures[key]})", ""]

    out += ["## Results", "",
            _table([("validation loss (nats/token)", _fmt(metrics["val_loss"])),
                    ("perplexity", _fmt(metrics["perplexity"])),
                    ("next-token accuracy", _fmt(metrics["token_accuracy"], 3)),
                    ("tokens evaluated", _fmt(metrics["eval_tokens"])),
                    ("letter counting (exact)", _fmt(metrics["letter_counting"], 3)),
                    ("arithmetic (exact)", _fmt(metrics["arithmetic"], 3))], ("metric", "value")), "",
            f"Perplexity and accuracy are on held-out documents of `{results['dataset']}` (the training run's "
            "own document split).", "", f"![Validation perplexity and accuracy]({figures['perplexity']})", ""]

    for kind, title in (("letter_counting", "Letter counting"), ("arithmetic", "Arithmetic")):
        rows = results["tasks"][kind]["items"]
        if rows:
            out += [f"### {title}: {results['tasks'][kind]['accuracy']:.0%} of {len(rows)}", "",
                    _table([(r["question"], r["answer"], f"`{r['reply']}`" if r["reply"] else "(empty)",
                             "yes" if r["correct"] else "no") for r in rows[:8]],
                           ("question (two-shot)", "answer", "reply", "correct")), ""]

    if results["benchmarks"]:
        out += ["## Benchmarks", "",
                _table([(name, b["num_items"], ", ".join(f"{k} {v:.3f}" for k, v in b["metrics"].items()))
                        for name, b in results["benchmarks"].items()], ("benchmark", "items", "metrics")), ""]

    p = results["sample_params"]
    out += ["## Samples", "",
            f"temperature {p['temperature']}, top-k {p['top_k']}, top-p {p['top_p']}, seed {p['seed']}, "
            f"{p['max_new_tokens']} new tokens at most.", ""]
    for s in results["samples"]:
        out += [f"**Prompt** `{s['prompt'].strip()}`", "", _quote(s["prompt"] + s["completion"]), ""]
    out += [f"_Evaluated in {results['eval_seconds']:.0f} s._", ""]
    return "\n".join(out)
