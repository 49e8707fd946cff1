"""Prompt/target pairs for training a Mixture of Thoughts, and a seeded train/val/test split.

Sources (each gives ``TextPair(prompt, target, id)``):

- ``cpp_cuda``: C++ -> CUDA JSONL, one ``{"cpp": ..., "generated_cuda": ...}`` per line, turned into
  prompts with a template (default ``"### Translate C++ to CUDA:\\n{source}\\n### CUDA:\\n"``);
- ``qa``: question/response JSONL (``{"question": ..., "response": ...}``), prompts
  ``"Question: ...\\nAnswer:"`` as the evaluators use them;
- ``pairs``: JSONL that is already ``{"prompt": ..., "target": ...}`` (``completion`` also accepted);
- ``benchmark``: any loader of ``mot.data.load_benchmark`` (multiple choice, GSM8K, MATH, code,
  translation), formatted as the evaluators format them, the reference as target;
- ``stdlib_qa``: question/answer pairs built from the docstrings of the Python standard library on
  this machine (a small real task that needs no download).

A bad line fails with ``mot.errors.DataError`` naming the file and line (the loaders of
``mot.data`` do that).  ``split_pairs`` removes exact duplicates first, then splits by ratios with a
seeded permutation, so no pair is in two splits.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from mot.errors import DataError, UsageError
from mot.thoughts.run_config import CPP_CUDA_TEMPLATE, QA_TEMPLATE, DataConfig, DataSource

logger = logging.getLogger("mot.thoughts")


@dataclass(frozen=True)
class TextPair:
    """One training sample: the model reads ``prompt`` and learns to continue it with ``target``."""

    prompt: str
    target: str
    id: str = ""

    @property
    def key(self) -> str:
        """Content hash of the sample (what the peer-state cache and the split key on)."""
        return sample_key(self.prompt, self.target)


def sample_key(prompt: str, target: str) -> str:
    digest = hashlib.sha256()
    digest.update(prompt.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(target.encode("utf-8"))
    return digest.hexdigest()


class PairDataset(Dataset):
    """A list of ``TextPair`` as a map-style dataset (items are the pairs themselves)."""

    def __init__(self, pairs: Sequence[TextPair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TextPair:
        return self.pairs[index]


# ----------------------------------------------------------------------------------------- sources


def _answer_target(prompt: str, answer: str) -> str:
    """A target that reads naturally after ``prompt`` (a space after a trailing colon)."""
    answer = answer.strip()
    return f" {answer}" if prompt.endswith(":") else answer


def cpp_cuda_pairs(path: str | Path, template: str = CPP_CUDA_TEMPLATE, limit: int | None = None) -> list[TextPair]:
    """C++ -> CUDA JSONL (``{"cpp", "generated_cuda"}`` per line) as prompt/target pairs.

    Records whose ``generated_cuda`` is null carry no target and are skipped (counted in the log)."""
    from mot.data import load_cpp_cuda

    _check_template(template, "source")
    records = load_cpp_cuda(path, limit=limit)
    pairs = [TextPair(template.format(source=r.source), r.target, f"cpp_cuda:{r.id}")
             for r in records if r.target is not None]
    if len(pairs) < len(records):
        logger.warning("%s: %d record(s) without generated_cuda skipped", path, len(records) - len(pairs))
    return pairs


def qa_pairs(path: str | Path, template: str = QA_TEMPLATE, limit: int | None = None) -> list[TextPair]:
    """Question/response JSONL (``{"question", "response"}`` per line) as prompt/target pairs."""
    from mot.data import load_qa

    _check_template(template, "question")
    out = []
    for item in load_qa(path, limit=limit):
        prompt = template.format(question=item.question.strip())
        out.append(TextPair(prompt, _answer_target(prompt, item.answer), f"qa:{item.id}"))
    return out


def jsonl_pairs(path: str | Path, limit: int | None = None) -> list[TextPair]:
    """JSONL of ready-made pairs: ``{"prompt": str, "target": str}`` (or ``"completion"``) per line."""
    from mot.data._io import data_error, iter_jsonl, require_str

    fmt = '{"prompt": str, "target": str}'
    out: list[TextPair] = []
    for line, record in iter_jsonl(path, fmt):
        if "prompt" not in record or not ({"target", "completion"} & set(record)):
            raise data_error(path, line, f"missing field(s); expected {fmt}")
        key = "target" if "target" in record else "completion"
        out.append(TextPair(require_str(record, "prompt", path, line), require_str(record, key, path, line),
                            f"pairs:{record.get('id', line)}"))
        if limit is not None and len(out) >= limit:
            break
    return out


def benchmark_pairs(name: str, path: str | Path | None, split: str | None = None,
                    limit: int | None = None, template: str | None = None) -> list[TextPair]:
    """Items of ``mot.data.load_benchmark(name, path, split, limit)`` as prompt/target pairs, formatted
    as the evaluators format them; items without a reference answer are skipped."""
    from mot.data import (
        BENCHMARKS,
        CodeItem,
        GenerativeItem,
        MultipleChoiceItem,
        TranslationPair,
        benchmark_spec,
        load_benchmark,
    )
    from mot.evaluation.scoring import format_multiple_choice, generative_prompt

    spec = benchmark_spec(name)
    items = load_benchmark(name, path, split, limit)
    out: list[TextPair] = []
    for item in items:
        ident = f"{spec.name}:{item.id}"
        if isinstance(item, MultipleChoiceItem):
            if item.answer_index is None:
                continue
            prompt, continuations = format_multiple_choice(item)
            out.append(TextPair(prompt, continuations[item.answer_index], ident))
        elif isinstance(item, GenerativeItem):
            prompt, _ = generative_prompt(item, spec.task)
            out.append(TextPair(prompt, _answer_target(prompt, item.solution or item.answer), ident))
        elif isinstance(item, CodeItem):
            if item.canonical_solution is None:
                continue
            out.append(TextPair(item.prompt, item.canonical_solution, ident))
        elif isinstance(item, TranslationPair):
            if item.target is None:
                continue
            out.append(TextPair((template or CPP_CUDA_TEMPLATE).format(source=item.source), item.target, ident))
        else:
            raise UsageError(f"benchmark {name!r} has no reference targets to train on "
                             f"(its items are {type(item).__name__}); trainable ones: "
                             f"{', '.join(n for n, s in BENCHMARKS.items() if s.task != 'pareval')}")
    if not out:
        raise DataError(f"benchmark {name!r} ({path}): no item with a reference answer to train on")
    return out


def stdlib_qa_pairs(limit: int | None = None, modules: Sequence[str] | None = None) -> list[TextPair]:
    """Question/answer pairs from the Python standard library on this machine: for each public function
    or class with a docstring, ``"What does `module.name` do?"`` answered by its docstring's first
    sentence.  Deterministic (sorted modules and names), no import of the modules themselves."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) if modules is None else [root / f"{m}.py" for m in modules]
    out: list[TextPair] = []
    for file in files:
        if file.name.startswith("_") or not file.is_file():
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            answer = _first_sentence(doc) if doc else ""
            if not 20 <= len(answer) <= 200:
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            prompt = QA_TEMPLATE.format(question=f"What does the Python {kind} `{file.stem}.{node.name}` do?")
            out.append(TextPair(prompt, _answer_target(prompt, answer), f"stdlib:{file.stem}.{node.name}"))
            if limit is not None and len(out) >= limit:
                return out
    return out


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


def _check_template(template: str, field: str) -> None:
    if "{" + field + "}" not in template:
        raise UsageError(f"prompt template {template!r} must contain {{{field}}}")


# ------------------------------------------------------------------------------------------ split


def dedupe(pairs: Sequence[TextPair]) -> list[TextPair]:
    """Drop exact repeats of (prompt, target), keeping the first."""
    seen: set[str] = set()
    out = []
    for pair in pairs:
        if pair.key not in seen:
            seen.add(pair.key)
            out.append(pair)
    return out


def split_pairs(pairs: Sequence[TextPair], ratios: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> tuple[list[TextPair], list[TextPair], list[TextPair]]:
    """``(train, val, test)``: duplicates removed, then a seeded shuffle cut by ``ratios`` (normalised).

    Sizes are ``round`` of the ratio times the count for val and test; train takes the rest.  A split
    with a positive ratio gets at least one pair when there are enough pairs."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise UsageError(f"split ratios must be three non-negative numbers (train, val, test), got {list(ratios)}")
    unique = dedupe(pairs)
    total = sum(ratios)
    n = len(unique)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    sizes = [round(n * r / total) for r in ratios[1:]]
    sizes = [max(1, s) if r > 0 and n >= 3 else s for s, r in zip(sizes, ratios[1:], strict=True)]
    n_val, n_test = sizes
    n_train = n - n_val - n_test
    if n_train <= 0 and ratios[0] > 0:
        raise DataError(f"only {n} distinct pair(s): too few to split into train/val/test by {list(ratios)}")
    shuffled = [unique[i] for i in order]
    return shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]


# ----------------------------------------------------------------------------------- from a config


def load_source(source: DataSource) -> list[TextPair]:
    """The pairs of one ``data.sources`` entry of a run config."""
    kind = source.kind
    if kind == "cpp_cuda":
        return cpp_cuda_pairs(source.path, source.template or CPP_CUDA_TEMPLATE, source.limit)
    if kind == "qa":
        return qa_pairs(source.path, source.template or QA_TEMPLATE, source.limit)
    if kind == "pairs":
        return jsonl_pairs(source.path, source.limit)
    if kind == "benchmark":
        return benchmark_pairs(source.name, source.path, source.split, source.limit, source.template)
    if kind == "stdlib_qa":
        return stdlib_qa_pairs(source.limit)
    raise UsageError(f"unknown data source kind {kind!r}")


def load_splits(data: DataConfig) -> tuple[list[TextPair], list[TextPair], list[TextPair]]:
    """``(train, val, test)`` pairs of a run config's ``data`` section."""
    pool = [pair for source in data.sources for pair in load_source(source)]
    if data.max_samples is not None:
        pool = dedupe(pool)[:data.max_samples]
    explicit_val = [p for s in data.val_sources for p in load_source(s)]
    explicit_test = [p for s in data.test_sources for p in load_source(s)]
    ratios = list(data.split)
    if explicit_val:
        ratios[1] = 0.0
    if explicit_test:
        ratios[2] = 0.0
    train, val, test = split_pairs(pool, ratios, data.seed)
    held_out = {p.key for p in explicit_val + explicit_test}
    train = [p for p in train if p.key not in held_out]
    val = dedupe(explicit_val) if explicit_val else val
    test = dedupe(explicit_test) if explicit_test else test
    if data.max_val_samples is not None:
        val = val[:data.max_val_samples]
    if not train:
        raise DataError("the data sources give no training pairs; check data.sources and data.split")
    return train, val, test
