"""Math word problems with a final answer to extract: GSM8K and MATH PreAlgebra."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mot.data._io import (
    data_error,
    find_files,
    iter_jsonl,
    load_hub_dataset,
    read_json,
    require,
    require_str,
    take,
)
from mot.data.items import GenerativeItem

GSM8K_FORMAT = '{"question": str, "answer": str ending in "#### <number>"}'
MATH_FORMAT = '{"problem", "level", "type", "solution" (with a \\boxed{} answer)}'


def load_gsm8k(path: str | Path | None, split: str = "test", limit: int | None = None) -> list[GenerativeItem]:
    """GSM8K (Cobbe et al., 2021).

    Upstream: github.com/openai/grade-school-math, ``grade_school_math/data/{train,test}.jsonl``: one
    ``{"question", "answer"}`` object per line; the answer is a worked solution whose last line is
    ``#### <number>``.  ``item.answer`` is that number with thousands separators removed; the full
    text is ``item.solution``.  ``path`` may be the data directory or one file.  With ``path=None``:
    the hub dataset ``openai/gsm8k`` (config ``main``).
    """
    if path is None:
        rows = load_hub_dataset("gsm8k", "openai/gsm8k", "main", split)
        return take((_gsm8k_item(i, r, "hub:openai/gsm8k", None, split) for i, r in enumerate(rows)), limit)
    files = find_files(path, [f"{split}.jsonl", f"data/{split}.jsonl", f"grade_school_math/data/{split}.jsonl"],
                       f"GSM8K {split}.jsonl")

    def rows() -> Iterator[GenerativeItem]:
        index = 0
        for file in files:
            for line, rec in iter_jsonl(file, GSM8K_FORMAT):
                yield _gsm8k_item(index, rec, file, line, split)
                index += 1

    return take(rows(), limit)


def _gsm8k_item(index: int, rec: dict, file, line, split: str) -> GenerativeItem:
    require(rec, ["question", "answer"], file, line, GSM8K_FORMAT)
    solution = require_str(rec, "answer", file, line)
    if "####" not in solution:
        raise data_error(file, line, f"answer has no '#### <number>' final line; expected {GSM8K_FORMAT}")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return GenerativeItem(id=f"{split}/{index}", question=require_str(rec, "question", file, line),
                          answer=final, solution=solution)


def load_prealgebra(path: str | Path | None, split: str = "test", limit: int | None = None) -> list[GenerativeItem]:
    """MATH PreAlgebra (Hendrycks et al., 2021).

    Upstream: https://people.eecs.berkeley.edu/~hendrycks/MATH.tar, unpacked as
    ``MATH/{train,test}/prealgebra/<n>.json``: one JSON object per file,
    ``{"problem", "level", "type", "solution"}``; the reference answer is the content of the last
    ``\\boxed{...}`` in the solution.  ``path`` may be ``MATH/``, ``MATH/test/``, the ``prealgebra``
    directory or one file; files are read in numeric order of their names.  With ``path=None``: the
    hub dataset ``EleutherAI/hendrycks_math`` (config ``prealgebra``).
    """
    if path is None:
        rows = load_hub_dataset("prealgebra", "EleutherAI/hendrycks_math", "prealgebra", split)
        return take((_math_item(str(i), r, "hub:EleutherAI/hendrycks_math")
                     for i, r in enumerate(rows)), limit)
    files = find_files(path, ["prealgebra/*.json", f"{split}/prealgebra/*.json", "*.json"],
                       "MATH prealgebra/*.json files")
    files.sort(key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))

    def rows() -> Iterator[GenerativeItem]:
        for file in files:
            rec = read_json(file)
            if not isinstance(rec, dict):
                raise data_error(file, 1, f"expected one JSON object {MATH_FORMAT}, got {type(rec).__name__}")
            yield _math_item(file.stem, rec, file)

    return take(rows(), limit)


def last_boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (balanced braces) or ``\\boxed x``; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", i):  # "\boxed 5": up to the next "$" or the end
        return text[i:].split("$", 1)[0].strip() or None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced


def _math_item(stem: str, rec: dict, file) -> GenerativeItem:
    require(rec, ["problem", "solution"], file, None, MATH_FORMAT)
    solution = require_str(rec, "solution", file, None)
    answer = last_boxed_content(solution)
    if answer is None:
        raise data_error(file, None, f"solution has no \\boxed{{...}} answer; expected {MATH_FORMAT}")
    return GenerativeItem(id=f"prealgebra/{stem}", question=require_str(rec, "problem", file, None),
                          answer=answer, solution=solution,
                          meta={"level": rec.get("level"), "type": rec.get("type")})
