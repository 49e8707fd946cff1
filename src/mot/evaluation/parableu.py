"""``parableu_approx``: a CUDA-aware CodeBLEU in the spirit of BabelTower's ParaBLEU.

Source: Wen et al., "BabelTower: Learning to Auto-parallelized Program Translation", ICML 2022
(PMLR 162). The paper introduces ParaBLEU for C -> CUDA translation: CodeBLEU (Ren et al., 2020:
n-gram match, keyword-weighted n-gram match, AST subtree match, data-flow match) extended so that
the parallel semantics of the translation count, i.e. whether the CUDA program uses the parallel
constructs (thread/block indexing, ``__global__``, synchronisation) and the loop structure that
the reference uses (a serial loop left in place of a parallelised one is the typical error).

What could not be recovered: the paper's text was not available to us here, so the exact
formula, the parallel-semantics component definitions and the weights are NOT the paper's. Scores
from this function are therefore not comparable with ParaBLEU numbers published in the paper,
hence the name. What we compute, all corpus-level in [0, 1] and combined into [0, 100]:

=========================  ======  ==============================================================
component                  weight  definition
=========================  ======  ==============================================================
``ngram_match``            0.2     BLEU-4 over code tokens (codebleu's ``bleu.corpus_bleu``)
``weighted_ngram_match``   0.2     codebleu's weighted unigram match, weight 1 for C++ keywords
                                   and the CUDA keywords in :data:`CUDA_KEYWORDS`, 0.2 otherwise
``syntax_match``           0.2     codebleu's AST subtree match, parsed with tree-sitter-cuda
``dataflow_match``         0.2     codebleu's data-flow match (``cpp`` rules, CUDA grammar);
                                   full (1) only when the references have no data flow
``parallel_match``         0.1     F1 between the multisets of parallel constructs of prediction
                                   and reference (``threadIdx.x``, ``blockIdx.y``, ``blockDim.x``,
                                   ``gridDim``, ``__global__``, ``__shared__``,
                                   ``__syncthreads``, atomics, ``<<<``, ...); 1 when both have none
``loop_match``             0.1     ``1 - |Lp - Lr| / max(Lp, Lr)`` with L the number of
                                   ``for``/``while``/``do`` loops in the tree-sitter-cuda parse;
                                   1 when both have none; averaged over pairs
=========================  ======  ==============================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from mot.evaluation.code_metrics import (
    _codebleu_parts,
    _cpp_keywords,
    _cuda_facts,
    _pairs,
    code_tokens,
)

__all__ = [
    "CUDA_KEYWORDS",
    "PARABLEU_WEIGHTS",
    "count_loops",
    "parableu_approx",
    "parableu_components",
    "parallel_constructs",
]

CUDA_KEYWORDS = frozenset(
    """
    __global__ __device__ __host__ __shared__ __constant__ __managed__ __restrict__ __forceinline__
    __syncthreads __syncwarp __threadfence __ldg threadIdx blockIdx blockDim gridDim warpSize
    atomicAdd atomicSub atomicMax atomicMin atomicExch atomicCAS atomicAnd atomicOr atomicXor
    __shfl_sync __shfl_up_sync __shfl_down_sync __shfl_xor_sync __ballot_sync __any_sync __all_sync
    cudaMalloc cudaMallocManaged cudaMemcpy cudaMemset cudaFree cudaDeviceSynchronize
    cudaMemcpyHostToDevice cudaMemcpyDeviceToHost dim3 <<< >>>
    """.split()
)

PARABLEU_WEIGHTS = {
    "ngram_match": 0.2,
    "weighted_ngram_match": 0.2,
    "syntax_match": 0.2,
    "dataflow_match": 0.2,
    "parallel_match": 0.1,
    "loop_match": 0.1,
}

_INDEX_VARS = frozenset({"threadIdx", "blockIdx", "blockDim", "gridDim"})


def parallel_constructs(code: str) -> Counter:
    """Multiset of CUDA parallel constructs: ``threadIdx.x``-style index reads (with the
    dimension) and every other :data:`CUDA_KEYWORDS` token."""
    toks = code_tokens(code)
    found: Counter = Counter()
    for i, tok in enumerate(toks):
        if tok in _INDEX_VARS:
            dim = toks[i + 2] if i + 2 < len(toks) and toks[i + 1] == "." else ""
            found[f"{tok}.{dim}" if dim in ("x", "y", "z") else tok] += 1
        elif tok in CUDA_KEYWORDS:
            found[tok] += 1
    return found


def _f1(pred: Counter, ref: Counter) -> float:
    if not pred and not ref:
        return 1.0
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def count_loops(code: str) -> int:
    """Number of ``for``/``while``/``do`` statements in the tree-sitter-cuda parse of ``code``."""
    return _cuda_facts(code)[1]


def _loop_similarity(a: int, b: int) -> float:
    return 1.0 if a == b == 0 else 1.0 - abs(a - b) / max(a, b)


CUDA_WEIGHTED_KEY = "weighted_ngram_match_cuda"


def cuda_keyword_set() -> frozenset[str]:
    """Keywords weighted 1 in ParaBLEU's weighted n-gram match: codebleu's C++ list + CUDA."""
    return _cpp_keywords() | CUDA_KEYWORDS


def _components_from_parts(preds: list[str], refs: list[str], parts: dict[str, float]) -> dict[str, float]:
    n = len(preds)
    return {
        "ngram_match": parts["ngram_match"],
        "weighted_ngram_match": parts[CUDA_WEIGHTED_KEY],
        "syntax_match": parts["syntax_match"],
        "dataflow_match": parts["dataflow_match"],
        "parallel_match": sum(
            _f1(parallel_constructs(p), parallel_constructs(r)) for p, r in zip(preds, refs, strict=True)
        )
        / n,
        "loop_match": sum(
            _loop_similarity(count_loops(p), count_loops(r)) for p, r in zip(preds, refs, strict=True)
        )
        / n,
    }


def parableu_components(preds: Sequence[str] | str, refs: Sequence[str] | str) -> dict[str, float]:
    """The six components of :func:`parableu_approx`, each in [0, 1]."""
    preds, refs = _pairs(preds, refs)
    parts = _codebleu_parts(preds, refs, {CUDA_WEIGHTED_KEY: cuda_keyword_set()}, "cuda")
    return _components_from_parts(preds, refs, parts)


def _combine(components: dict[str, float], weights: dict[str, float] | None = None) -> float:
    weights = PARABLEU_WEIGHTS if weights is None else weights
    return 100.0 * sum(weights[name] * components[name] for name in weights)


def parableu_approx(
    preds: Sequence[str] | str, refs: Sequence[str] | str, *, weights: dict[str, float] | None = None
) -> float:
    """Corpus ``parableu_approx`` in [0, 100] (see the module docstring for what it is and is not)."""
    return _combine(parableu_components(preds, refs), weights)
