"""Datasets for mot's lm-evaluation-harness task files, read from local files in the upstream layout.

lm-eval imports this file by path (``custom_dataset: !function loaders.mmlu`` in the task YAMLs next to
it) and calls the function with the task's metadata and ``dataset_kwargs`` as keyword arguments.  The
data directory of a benchmark comes from the metadata key ``<benchmark>_dir`` (``lm_eval --metadata
'{"mmlu_dir": "PATH"}'``, ``mot eval harness --data mmlu=PATH``) or the environment variable
``MOT_<BENCHMARK>_DIR``.  Rows come from mot's own loaders (``mot.data``), so a harness task sees the
same items, in the same order, as ``mot eval run``.

Document fields, as lm-eval's own task files for these benchmarks expect them:

- MMLU: ``question``, ``subject``, ``choices`` (4 strings), ``answer`` (index 0-3) -- the hub layout of
  ``cais/mmlu``; files ``{dev,test}/{subject}_{split}.csv`` (no header: question, A, B, C, D, letter).
- CMMLU: ``Question``, ``A``, ``B``, ``C``, ``D``, ``Answer`` (a letter) -- the upstream CSV columns;
  files ``{dev,test}/{subject}.csv``.
- GSM8K: ``question``, ``answer`` (the worked solution ending in ``#### <number>``); files
  ``{train,test}.jsonl``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LETTERS = ("A", "B", "C", "D")


def data_dir(benchmark: str, metadata: dict[str, Any]) -> Path:
    """The directory of ``benchmark``'s files: metadata ``<benchmark>_dir``, else ``MOT_<BENCHMARK>_DIR``."""
    from mot.errors import UsageError

    key, env = f"{benchmark}_dir", f"MOT_{benchmark.upper()}_DIR"
    value = metadata.get(key) or os.environ.get(env)
    if not value:
        raise UsageError(f"mot_{benchmark} tasks read local files: give the {benchmark.upper()} data directory "
                         f"(mot eval harness --data {benchmark}=PATH, lm_eval --metadata "
                         f"'{{\"{key}\": \"PATH\"}}', or the environment variable {env})")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory ({key}: the {benchmark.upper()} data directory)")
    return path


def _subject_file(root: Path, split: str, name: str) -> Path | None:
    for candidate in (root / split / name, root / "data" / split / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def _dataset_dict(splits: dict[str, list[dict]], columns: dict[str, Any]):
    from datasets import Dataset, DatasetDict, Features

    features = Features(columns)
    return DatasetDict({name: Dataset.from_dict({k: [row[k] for row in rows] for k in columns}, features=features)
                        for name, rows in splits.items()})


def _required(path: Path | None, root: Path, what: str) -> Path:
    if path is None:
        from mot.errors import UsageError

        raise UsageError(f"{root}: no {what} (looked in {root}/, {root}/data/ and the split directories); "
                         "give a directory in the upstream layout or choose subjects your copy has")
    return path


def mmlu(subject: str, **metadata: Any):
    """MMLU ``subject``: ``test`` (scored) and ``dev`` (few-shot examples; empty when absent)."""
    from datasets import Sequence, Value

    from mot.data.multiple_choice import load_mmlu

    root = data_dir("mmlu", metadata)
    splits: dict[str, list[dict]] = {}
    for split in ("test", "dev"):
        path = _subject_file(root, split, f"{subject}_{split}.csv")
        if split == "test":
            path = _required(path, root, f"MMLU file {split}/{subject}_{split}.csv")
        items = load_mmlu(path, split) if path else []
        splits[split] = [{"question": it.question, "subject": subject, "choices": list(it.choices),
                          "answer": it.answer_index} for it in items]
    columns = {"question": Value("string"), "subject": Value("string"), "choices": Sequence(Value("string")),
               "answer": Value("int64")}
    return _dataset_dict(splits, columns)


def cmmlu(subject: str, **metadata: Any):
    """CMMLU ``subject``: ``test`` (scored) and ``dev`` (few-shot examples; empty when absent)."""
    from datasets import Value

    from mot.data.multiple_choice import load_cmmlu

    root = data_dir("cmmlu", metadata)
    splits: dict[str, list[dict]] = {}
    for split in ("test", "dev"):
        path = _subject_file(root, split, f"{subject}.csv")
        if split == "test":
            path = _required(path, root, f"CMMLU file {split}/{subject}.csv")
        items = load_cmmlu(path, split) if path else []
        splits[split] = [{"Question": it.question, **dict(zip(LETTERS, it.choices, strict=True)),
                          "Answer": LETTERS[it.answer_index]} for it in items]
    columns = {name: Value("string") for name in ("Question", *LETTERS, "Answer")}
    return _dataset_dict(splits, columns)


def gsm8k(**metadata: Any):
    """GSM8K ``test`` (scored) and ``train`` (few-shot examples; empty when absent)."""
    from datasets import Value

    from mot.data.math import load_gsm8k

    root = data_dir("gsm8k", metadata)
    splits: dict[str, list[dict]] = {}
    for split in ("test", "train"):
        path = _subject_file(root, split, f"{split}.jsonl") or _subject_file(
            root, split, f"grade_school_math/data/{split}.jsonl")
        if split == "test":
            path = _required(path, root, f"GSM8K file {split}.jsonl")
        items = load_gsm8k(path, split) if path else []
        splits[split] = [{"question": it.question, "answer": it.solution} for it in items]
    return _dataset_dict(splits, {"question": Value("string"), "answer": Value("string")})
