"""Benchmark loaders: local files in each benchmark's upstream format (HF hub when online and supported).

``load_benchmark(name, path=None, split=None, limit=None)`` is the one entry point; each loader's
docstring gives the expected local layout and where to get the data.  Every loader returns a list
of small dataclasses (:mod:`mot.data.items`) in a deterministic order and raises
:class:`mot.errors.DataError` naming the file and line on malformed input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mot.data.code import load_humaneval, load_mbpp
from mot.data.items import CodeItem, GenerativeItem, MultipleChoiceItem, ParEvalPrompt, TranslationPair
from mot.data.math import load_gsm8k, load_prealgebra
from mot.data.multiple_choice import load_arc_challenge, load_ceval, load_cmmlu, load_mmlu
from mot.data.parallel import detokenize_cpp, load_babeltower, load_cpp_cuda, load_pareval
from mot.data.qa import load_qa
from mot.data.sampling import DEFAULT_SAMPLE_SEED, parse_partitioned_split, partition, sample_items
from mot.errors import UsageError


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    task: str  # "multiple_choice" | "gsm8k" | "math" | "qa" | "code" | "translation" | "pareval"
    loader: Callable[..., list]
    default_split: str


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec("mmlu", "multiple_choice", load_mmlu, "test"),
    BenchmarkSpec("cmmlu", "multiple_choice", load_cmmlu, "test"),
    BenchmarkSpec("ceval", "multiple_choice", load_ceval, "val"),
    BenchmarkSpec("arc_challenge", "multiple_choice", load_arc_challenge, "test"),
    BenchmarkSpec("gsm8k", "gsm8k", load_gsm8k, "test"),
    BenchmarkSpec("prealgebra", "math", load_prealgebra, "test"),
    BenchmarkSpec("humaneval", "code", load_humaneval, "test"),
    BenchmarkSpec("mbpp", "code", load_mbpp, "test"),
    BenchmarkSpec("pareval", "pareval", load_pareval, "generation"),
    BenchmarkSpec("babeltower", "translation", load_babeltower, "test"),
    BenchmarkSpec("cpp_cuda", "translation", load_cpp_cuda, "test"),
    BenchmarkSpec("qa", "qa", load_qa, "test"),
]}


def benchmark_spec(name: str) -> BenchmarkSpec:
    key = name.lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def load_benchmark(name: str, path: str | Path | None = None, split: str | None = None,
                   limit: int | None = None, *, sample_seed: int | None = None) -> list:
    """Load benchmark ``name`` from ``path`` (local upstream files) or, with ``path=None``, from the package
    (HumanEval) or the HF hub where the loader supports it.  ``split=None`` takes the benchmark's default.

    ``split`` may name a part of a split, ``"test[train]"`` or ``"test[eval]"``: a fixed seeded partition
    of the test items (:func:`mot.data.sampling.partition`), for benchmarks without training data.
    ``limit``: the first ``limit`` items, or with ``sample_seed`` given (and always for a partitioned
    split) ``limit`` items sampled across subjects (:func:`mot.data.sampling.sample_items`)."""
    spec = benchmark_spec(name)
    base, part = parse_partitioned_split(split or spec.default_split)
    if part is None and sample_seed is None:
        return spec.loader(path, split=base, limit=limit)
    items = spec.loader(path, split=base, limit=None)
    if part is not None:
        items = partition(items, part, spec.name)
    return sample_items(items, limit, DEFAULT_SAMPLE_SEED if sample_seed is None else sample_seed)


__all__ = [
    "BENCHMARKS", "BenchmarkSpec", "CodeItem", "GenerativeItem", "MultipleChoiceItem", "ParEvalPrompt",
    "TranslationPair", "benchmark_spec", "detokenize_cpp", "load_arc_challenge", "load_babeltower", "load_benchmark",
    "load_ceval", "load_cmmlu", "load_cpp_cuda", "load_gsm8k", "load_humaneval", "load_mbpp", "load_mmlu",
    "load_pareval", "load_prealgebra", "load_qa", "partition", "sample_items",
]
