"""Train the baseline routers (``mot.routing.baselines``) on per-expert correctness, cached.

The pipeline, shared by ``mot eval train-router`` and ``bench/mot_table.py``:

1. ``expert_correctness``: every expert scores the training items through ``run_evaluation`` (its
   per-item files under ``cache_dir`` are the cache: computed once, resumed after an interruption);
   ``correctness[n, e]`` is expert ``e``'s primary metric on item ``n`` (accuracy, exact match, pass@1).
2. ``routing_text``: what a router reads for an item, exactly the text the evaluation routes on (the
   multiple-choice context, the generation prompt).
3. ``fit_router``: build a registered router over the encoder's features and ``fit`` it; ``save_router``
   writes it with the experts, the encoder and the training items it saw, for ``mot eval run``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mot.data import MultipleChoiceItem, benchmark_spec
from mot.errors import UsageError
from mot.evaluation import scoring
from mot.evaluation.runner import DEFAULT_MC_STYLE, PRIMARY_METRIC, read_partial, run_evaluation
from mot.generation import GenerationParams

ROUTER_METHODS = ("routerdc", "cluster")


def routing_text(item: Any, task: str, mc_style: str = "letters") -> str:
    """The text a router reads for ``item``: what ``mot eval run`` routes on."""
    if isinstance(item, MultipleChoiceItem):
        return scoring.format_multiple_choice(item, mc_style)[0]
    if task == "code":
        return item.prompt
    return scoring.generative_prompt(item, task)[0]


def expert_correctness(benchmark: str, items: Sequence, experts: Mapping[str, Any], cache_dir: str | Path, *,
                       params: GenerationParams | None = None, batch_size: int = 8,
                       progress: bool = False) -> torch.Tensor:
    """``[N, E]`` per-item primary metric of each expert (columns in ``experts`` order), cached in
    ``cache_dir`` (``run_evaluation``'s partial files: a rerun only scores what is missing)."""
    spec = benchmark_spec(benchmark)
    results = run_evaluation(spec.name, experts, items, cache_dir, batch_size=batch_size, params=params,
                             progress=progress, report=False)
    metric = results["primary_metric"]
    out = torch.zeros(len(items), len(experts))
    for e, name in enumerate(experts):
        records = read_partial(Path(cache_dir) / results["models"][name]["partial_file"])
        for n, item in enumerate(items):
            out[n, e] = float(records[str(item.id)]["scores"].get(metric, 0.0))
    return out


def fit_router(method: str, features: torch.Tensor, correctness: torch.Tensor, *, top_k: int = 1,
               **options: Any) -> tuple[torch.nn.Module, dict]:
    """A registered router ``method`` built over ``features.shape[1]`` inputs and fitted."""
    from mot.routing import build_router

    if method not in ROUTER_METHODS:
        raise UsageError(f"unknown router method {method!r}; choose one of {', '.join(ROUTER_METHODS)}")
    router = build_router(method, int(features.shape[1]), int(correctness.shape[1]), top_k, **options)
    info = router.fit(features, correctness)
    return router.eval(), info


def train_router(method: str, train_sets: Sequence[tuple[str, Sequence]], experts: Mapping[str, Any],
                 output_dir: str | Path, *, encoder: Any, encoder_name: str, cache_dir: str | Path | None = None,
                 params: GenerationParams | None = None, options: Mapping[str, Any] | None = None,
                 batch_size: int = 8, progress: bool = False) -> dict:
    """Score ``experts`` on every ``(benchmark, items)`` training set (cached), embed the routing texts
    with ``encoder`` (a ``PromptEncoder``, recorded as ``encoder_name``), fit router ``method`` on all of
    them together and save it to ``output_dir``.
    Returns the saved ``router.json`` contents."""
    from mot.routing.checkpoint import save_router

    cache = Path(cache_dir) if cache_dir is not None else Path(output_dir).with_name(Path(output_dir).name + "-correctness")
    texts: list[str] = []
    rows: list[torch.Tensor] = []
    counts: dict[str, int] = {}
    for benchmark, items in train_sets:
        spec = benchmark_spec(benchmark)
        if spec.task not in PRIMARY_METRIC:
            raise UsageError(f"benchmark {spec.name!r} cannot train a router here (not a mot eval run benchmark)")
        rows.append(expert_correctness(spec.name, items, experts, cache / spec.name, params=params,
                                       batch_size=batch_size, progress=progress))
        style = DEFAULT_MC_STYLE.get(spec.name, "letters")
        texts += [routing_text(it, spec.task, style) for it in items]
        counts[spec.name] = len(items)
    correctness = torch.cat(rows)
    features = encoder.encode(texts)
    router, info = fit_router(method, features, correctness, **dict(options or {}))
    meta = {"experts": list(experts), "encoder": encoder_name, "method": method, "training_items": counts,
            "expert_train_scores": {name: float(correctness[:, e].mean()) for e, name in enumerate(experts)},
            "fit": info}
    save_router(router, output_dir, dict(options or {}), **meta)
    return json.loads((Path(output_dir) / "router.json").read_text(encoding="utf-8"))


# where a benchmark's training items come from when the user names none: a train split where one
# exists, else the fixed training part of the test split (never scored by the evaluation's eval part)
DEFAULT_TRAIN_SPLIT = {"gsm8k": "train", "mmlu": "test[train]", "cmmlu": "test[train]", "ceval": "val[train]",
                       "arc_challenge": "train", "humaneval": "test[train]", "mbpp": "train"}
DEFAULT_EVAL_SPLIT = {"mmlu": "test[eval]", "cmmlu": "test[eval]", "ceval": "val[eval]", "humaneval": "test[eval]"}


def parse_train_set(text: str) -> tuple[str, str | None, str]:
    """``"BENCH=PATH[@SPLIT]"`` or ``"BENCH[@SPLIT]"`` -> ``(benchmark, path or None, split)``."""
    name, _, rest = text.partition("=")
    path, split = rest, None
    if "@" in (rest or name):
        if rest:
            path, _, split = rest.rpartition("@")
        else:
            name, _, split = name.partition("@")
    spec = benchmark_spec(name.strip())
    split = split or DEFAULT_TRAIN_SPLIT.get(spec.name)
    if split is None:
        raise UsageError(f"--train {text!r}: benchmark {spec.name!r} has no default training split; "
                         "write BENCH=PATH@SPLIT")
    return spec.name, (path or None), split
