"""One import point for the evaluation metrics, and :func:`score_translations`.

The metrics live by concept: :mod:`~mot.evaluation.passk` (pass@k, build@k),
:mod:`~mot.evaluation.code_metrics` (BLEU, chrF, ROUGE-L, CodeBLEU, exact match, edit similarity,
CUDA syntax validity), :mod:`~mot.evaluation.parableu` and :mod:`~mot.evaluation.compile` (nvcc).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from mot.evaluation.code_metrics import (
    _codebleu_from,
    _codebleu_parts,
    _cpp_keywords,
    _dataflow_match,
    _pairs,
    bleu4,
    chrf,
    code_tokens,
    codebleu,
    codebleu_components,
    cuda_syntax_valid,
    edit_similarity,
    exact_match,
    normalize_code,
    rouge_l,
)
from mot.evaluation.compile import compile_cuda, compiles_cuda, cuda_compile_rate, nvcc_path
from mot.evaluation.parableu import (
    CUDA_WEIGHTED_KEY,
    _combine,
    _components_from_parts,
    cuda_keyword_set,
    parableu_approx,
    parableu_components,
)
from mot.evaluation.passk import build_at_k, build_at_ks, pass_at_k, pass_at_ks

__all__ = [
    "bleu4",
    "build_at_k",
    "build_at_ks",
    "chrf",
    "code_tokens",
    "codebleu",
    "codebleu_components",
    "compile_cuda",
    "compiles_cuda",
    "cuda_compile_rate",
    "cuda_syntax_valid",
    "edit_similarity",
    "exact_match",
    "normalize_code",
    "nvcc_path",
    "parableu_approx",
    "parableu_components",
    "pass_at_k",
    "pass_at_ks",
    "rouge_l",
    "score_translations",
]


def _offloaded(preds: list[str], refs: list[str]) -> dict[str, float]:
    """The two slowest metrics, run in the worker process when there is one."""
    return {"dataflow_match": _dataflow_match(refs, preds, "cuda"), "chrf": chrf(preds, refs)}


def _surface_metrics(preds: list[str], refs: list[str]) -> dict[str, float]:
    return {
        "bleu": bleu4(preds, refs),
        "rouge_l": rouge_l(preds, refs),
        "exact_match": exact_match(preds, refs),
        "edit_similarity": edit_similarity(preds, refs),
        "syntax_validity": 100.0 * sum(cuda_syntax_valid(p) for p in preds) / len(preds),
    }


_PARALLEL_MIN_PAIRS = 200  # below this a forked worker costs more than it saves


def _dataflow_pool(num_pairs: int, workers: int) -> ProcessPoolExecutor | None:
    if (
        workers < 2
        or num_pairs < _PARALLEL_MIN_PAIRS
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return None
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))


def score_translations(
    preds: Sequence[str],
    refs: Sequence[str],
    *,
    check_compilation: bool = False,
    compile_workers: int = 2,
    workers: int = 2,
) -> dict:
    """Every code metric, corpus-level, for code translations (C/C++ -> CUDA in mind).

    Returns percentages in [0, 100]: ``bleu``, ``chrf``, ``rouge_l``, ``codebleu`` (+
    ``codebleu_components`` in [0, 1]), ``parableu_approx`` (+ ``parableu_components``),
    ``exact_match``, ``edit_similarity``, ``syntax_validity`` (share of predictions tree-sitter-cuda
    parses cleanly), ``compilation_accuracy`` (share accepted by ``nvcc -c``; ``None`` unless
    ``check_compilation`` and nvcc is installed: ``compilation_status`` says which) and
    ``num_samples``. Syntax and data-flow matches are computed once and shared by CodeBLEU and
    ParaBLEU. With ``workers > 1`` and at least 200 pairs, the data-flow match and chrF run in one
    forked process while the rest is computed here (1,000 BabelTower-sized pairs: ~3 s CPU here
    plus ~2.5 s in the worker).
    """
    preds, refs = _pairs(preds, refs)
    keyword_sets = {"weighted_ngram_match": _cpp_keywords(), CUDA_WEIGHTED_KEY: cuda_keyword_set()}
    pool = _dataflow_pool(len(preds), workers)
    if pool is None:
        offloaded = _offloaded(preds, refs)
        parts = _codebleu_parts(preds, refs, keyword_sets, "cuda", with_dataflow=False)
        others = _surface_metrics(preds, refs)
    else:
        # the data-flow match and chrF are the slowest parts: overlap them with everything else
        with pool:
            future = pool.submit(_offloaded, preds, refs)
            parts = _codebleu_parts(preds, refs, keyword_sets, "cuda", with_dataflow=False)
            others = _surface_metrics(preds, refs)
            offloaded = future.result()
    parts["dataflow_match"] = offloaded["dataflow_match"]
    others["chrf"] = offloaded["chrf"]
    cb_components = {
        k: parts[k] for k in ("ngram_match", "weighted_ngram_match", "syntax_match", "dataflow_match")
    }
    pb_components = _components_from_parts(preds, refs, parts)
    if not check_compilation:
        compilation, compilation_status = None, "not checked"
    elif nvcc_path() is None:
        compilation, compilation_status = None, "unavailable: nvcc not found"
    else:
        compilation = cuda_compile_rate(preds, workers=compile_workers)
        compilation_status = "nvcc -c"
    return {
        "num_samples": len(preds),
        **{k: others[k] for k in ("bleu", "chrf", "rouge_l")},
        "codebleu": 100.0 * _codebleu_from(cb_components),
        "codebleu_components": cb_components,
        "parableu_approx": _combine(pb_components),
        "parableu_components": pb_components,
        **{k: others[k] for k in ("exact_match", "edit_similarity", "syntax_validity")},
        "compilation_accuracy": compilation,
        "compilation_status": compilation_status,
    }


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Mean of ``a - b`` over paired per-item scores and its percentile bootstrap interval: items are
    resampled with replacement ``resamples`` times (seeded), the same draw for both systems.
    ``weights``: the statistic is ``sum(a - b) / sum(weights)`` over the drawn items instead of the mean
    (e.g. summed NLL over summed target bytes: nats per byte).  Returns ``{"diff", "low", "high", "n"}``."""
    import random

    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError(f"paired scores need the same items: {len(a)} vs {len(b)}"
                         + (f" (and {len(weights)} weights)" if weights is not None else ""))
    n = len(a)
    if n == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        drawn = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(diffs[i] for i in drawn) / sum(w[i] for i in drawn))
    stats.sort()
    tail = (1.0 - confidence) / 2
    low = stats[int(tail * (resamples - 1))]
    high = stats[int(round((1 - tail) * (resamples - 1)))]
    return {"diff": sum(diffs) / sum(w), "low": low, "high": high, "n": n}
