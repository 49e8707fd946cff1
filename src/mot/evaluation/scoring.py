"""Scoring: multiple choice by log-likelihood, generative answers by extraction + exact match, code by tests.

Every ``score_*`` function returns one plain dict per item with a ``scores`` mapping
``metric -> float``.  A benchmark's metric is the mean of its per-item scores, which is also what
lets the runner compute an oracle "best model per item" row (the mean of per-item maxima).

Multiple choice
    The context is the formatted question; each choice is a continuation and scores
    ``log P(continuation | context)`` summed over its tokens.  ``acc`` takes the arg-max of those
    sums; ``acc_norm`` the arg-max of the sums divided by the continuation's length in characters --
    the length normalisation of lm-evaluation-harness's ``acc_norm``.  Two prompt styles:
    ``letters`` (MMLU, CMMLU, C-Eval: choices listed as ``A. ...`` and the continuations are `` A``,
    `` B``, ...; every continuation has the same length, so there ``acc_norm == acc``) and ``text``
    (ARC: the continuation is the choice text itself).  Ties go to the first choice.

GSM8K
    The predicted answer is the first number after the last ``####`` if the text has one, otherwise
    the last number in the text.  Numbers may carry a sign, a ``$``, thousands separators and a
    decimal part; they are compared after removing ``,`` and ``$`` and normalising the value
    (``3.50`` == ``3.5``, ``-0`` == ``0``).

MATH
    The answer is the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``)
    with balanced braces; a prediction without one falls back to its last number.  Both sides are
    normalised (:func:`normalize_math_answer`) and compared as strings, or as exact rationals when
    both are plain numbers or ``\\frac{a}{b}`` (so ``0.5`` == ``\\frac12``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import NamedTuple, Protocol, runtime_checkable

from mot.data.items import CodeItem, GenerativeItem, MultipleChoiceItem
from mot.data.math import last_boxed_content
from mot.errors import MotError


class LogLikelihood(NamedTuple):
    """``log P(continuation | context)`` summed over the continuation's tokens."""

    logprob: float
    num_tokens: int
    is_greedy: bool  # every continuation token is the arg-max at its position


@runtime_checkable
class LogLikelihoodScorer(Protocol):
    """A model that scores continuations: what multiple-choice benchmarks need."""

    name: str

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]: ...


# ------------------------------------------------------------------ multiple choice

MC_STYLES = ("letters", "text")


def format_multiple_choice(item: MultipleChoiceItem, style: str = "letters") -> tuple[str, list[str]]:
    """``(context, continuations)`` for one item; see the module docstring for the two styles."""
    if style == "letters":
        head = ""
        if item.subject:
            head = f"The following is a multiple choice question about {item.subject.replace('_', ' ')}.\n\n"
        lines = [f"{label}. {choice}" for label, choice in zip(item.labels, item.choices, strict=True)]
        context = head + item.question.strip() + "\n" + "\n".join(lines) + "\nAnswer:"
        return context, [f" {label}" for label in item.labels]
    if style == "text":
        return f"Question: {item.question.strip()}\nAnswer:", [f" {c}" for c in item.choices]
    raise ValueError(f"unknown multiple-choice style {style!r}; expected one of {MC_STYLES}")


def argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (ties to the first choice, as numpy's argmax does)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_multiple_choice_item(item: MultipleChoiceItem, continuations: Sequence[str],
                               results: Sequence[LogLikelihood]) -> dict:
    logprobs = [float(r[0]) for r in results]
    normalised = [lp / max(len(c), 1) for lp, c in zip(logprobs, continuations, strict=True)]
    pred, pred_norm = argmax(logprobs), argmax(normalised)
    answer = item.answer_index
    scores = {} if answer is None else {"acc": float(pred == answer), "acc_norm": float(pred_norm == answer)}
    return {"id": item.id, "answer": answer, "pred": pred, "pred_norm": pred_norm, "logprobs": logprobs,
            "scores": scores}


def score_multiple_choice(scorer: LogLikelihoodScorer, items: Sequence[MultipleChoiceItem],
                          style: str = "letters") -> list[dict]:
    """Score ``items`` with one ``loglikelihood`` call (the scorer batches internally)."""
    requests: list[tuple[str, str]] = []
    spans: list[tuple[int, list[str]]] = []
    for item in items:
        context, continuations = format_multiple_choice(item, style)
        spans.append((len(requests), continuations))
        requests.extend((context, c) for c in continuations)
    results = scorer.loglikelihood(requests) if requests else []
    if len(results) != len(requests):
        raise MotError(f"scorer {getattr(scorer, 'name', scorer)!r} returned {len(results)} results for "
                       f"{len(requests)} requests")
    return [score_multiple_choice_item(item, conts, results[start:start + len(conts)])
            for item, (start, conts) in zip(items, spans, strict=True)]


def mean_scores(results: Iterable[dict]) -> dict[str, float]:
    """Mean of each per-item score over the items that have it."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in results:
        for k, v in r["scores"].items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


# ------------------------------------------------------------------ GSM8K

# A sign only where it cannot be a minus between two operands ("10-5" gives 10 and 5).
_NUMBER = re.compile(r"(?:(?<![\w)\]])-\s?)?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w)\]])-?\.\d+")


def normalize_number(text: str) -> str | None:
    """Canonical string of a number written with optional sign, ``$`` and thousands separators."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return normalize_number(matches[-1]) if matches else None


def extract_gsm8k_answer(text: str) -> str | None:
    """The first number after the last ``####``, else the last number in ``text`` (normalised)."""
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
        if found:
            return normalize_number(found.group(0))
    return extract_last_number(text)


# ------------------------------------------------------------------ MATH

def _braced(text: str) -> tuple[str, str] | None:
    """``("x", rest)`` for ``text == "{x}" + rest`` with balanced braces, else None."""
    depth = 0
    for j, ch in enumerate(text):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return text[1:j], text[j + 1:]
    return None


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``; ``\\frac1{2}`` and ``\\frac{1}2`` likewise."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        args: list[str] = []
        rest = part
        for _ in range(2):
            braced = _braced(rest) if rest.startswith("{") else None
            if braced is not None:
                args.append(braced[0])
                rest = braced[1]
            elif rest and not rest.startswith("{"):
                args.append(rest[0])
                rest = rest[1:]
        if len(args) == 2:
            out += "\\frac{" + args[0] + "}{" + args[1] + "}" + rest
        else:
            out += "\\frac" + part
    return out


def normalize_math_answer(answer: str) -> str:
    """Canonical form of a MATH answer (a documented subset of the usual ``strip_string`` rules):
    drop ``\\left``/``\\right``/``\\!``/``$``/``\\%``/degrees/spaces, ``dfrac``/``tfrac`` -> ``frac``, a
    trailing unit ``\\text{ ...}``, ``\\text{x}`` -> ``x``, thousands separators, a leading ``x =``,
    brace the arguments of ``\\frac``/``\\sqrt``, ``a/b`` of integers -> ``\\frac{a}{b}``, ``.5`` -> ``0.5``."""
    s = answer.strip().replace("\n", "")
    s = s.replace("\\!", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\(?:text|mbox)\{\s[^{}]*\}\s*$", "", s)  # trailing unit, e.g. "5\text{ cm}"
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" ", "").replace("\\,", "").replace("\\;", "").rstrip(".")
    s = re.sub(r"(?<!\d)(\d{1,3}(?:,\d{3})+)(?![\d,])", lambda m: m.group(1).replace(",", ""), s)
    if re.fullmatch(r"[A-Za-z]{1,2}=.+", s):
        s = s.split("=", 1)[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    return s


def _as_rational(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m:
        if int(m.group(3)) == 0:
            return None
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) else value
    if re.fullmatch(r"-?\d+(?:\.\d+)?", s):
        return Fraction(s)
    return None


def math_answers_equal(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    a, b = normalize_math_answer(prediction), normalize_math_answer(reference)
    if a == b:
        return True
    ra, rb = _as_rational(a), _as_rational(b)
    return ra is not None and ra == rb


def extract_math_answer(text: str) -> str | None:
    boxed = last_boxed_content(text)
    return boxed if boxed is not None else extract_last_number(text)


# ------------------------------------------------------------------ generative benchmarks

def normalize_text(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".!?")


def generative_prompt(item: GenerativeItem, task: str) -> tuple[str, list[str]]:
    """Zero-shot ``(prompt, stop strings)`` for ``task`` in ``gsm8k``, ``math``, ``qa``."""
    if task == "gsm8k":
        return f"Question: {item.question.strip()}\nAnswer:", ["\n\nQuestion:", "Question:"]
    if task == "math":
        return (f"Problem: {item.question.strip()}\nGive the final answer in \\boxed{{}}.\nSolution:",
                ["\n\nProblem:", "Problem:"])
    if task == "qa":
        return f"Question: {item.question.strip()}\nAnswer:", ["\n\nQuestion:", "Question:"]
    raise ValueError(f"no generative prompt for task {task!r}")


def score_generation(item: GenerativeItem, prediction: str, task: str) -> dict:
    """Extract the answer from ``prediction`` and compare it with the item's reference answer."""
    if task == "gsm8k":
        extracted = extract_gsm8k_answer(prediction)
        correct = extracted is not None and extracted == normalize_number(item.answer)
    elif task == "math":
        extracted = extract_math_answer(prediction)
        correct = math_answers_equal(extracted, item.answer)
    elif task == "qa":
        extracted = prediction.strip()
        correct = normalize_text(extracted) == normalize_text(item.answer)
    else:
        raise ValueError(f"no generative scoring for task {task!r}")
    return {"id": item.id, "prediction": prediction, "extracted": extracted, "reference": item.answer,
            "scores": {"exact_match": float(correct)}}


# ------------------------------------------------------------------ code

HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
FENCED_STOPS = ["```", "\nassert ", "\nif __name__"]


def code_stops(item: CodeItem) -> list[str]:
    """Stop strings: a continued prompt ends at the next top-level statement, a fenced one at the fence."""
    return FENCED_STOPS if item.prompt.rstrip().endswith("```python") else HUMANEVAL_STOPS


def build_program(item: CodeItem, completion: str) -> str:
    """The program to run for ``completion``.

    A completion that opens with a fenced code block (an instruction-tuned reply) is replaced by the
    block's content.  If the code defines ``item.entry_point`` at top level it is a whole function:
    it runs after the prompt (whose stub it redefines) for HumanEval, alone for MBPP.  Otherwise it
    continues the prompt (``item.code_prefix + completion``).
    """
    code = completion
    head, fence, tail = code.partition("```")
    if fence:
        if head.strip():
            code = head
        else:
            body = tail.split("\n", 1)[1] if "\n" in tail else ""
            code = body.split("```", 1)[0]
    if item.entry_point and re.search(rf"^def\s+{re.escape(item.entry_point)}\s*\(", code, re.MULTILINE):
        prefix = item.code_prefix.rstrip("\n") + "\n\n" if item.code_prefix else ""
        return f"{prefix}{code}\n\n{item.test_program}\n"
    return item.program(code)


def _passed(result) -> bool:
    if isinstance(result, bool):
        return result
    if isinstance(result, dict):
        return bool(result.get("passed"))
    return bool(result.passed)


def score_code_item(item: CodeItem, completions: Sequence[str], ks: Sequence[int] = (1, 5, 10),
                    timeout_s: float = 10.0) -> dict:
    """Run every completion's program in the sandbox; per-item pass@k with the unbiased estimator."""
    try:
        from mot.evaluation.passk import pass_at_k
        from mot.evaluation.sandbox import check_python_program
    except ImportError as e:
        raise MotError(f"code scoring needs mot.evaluation.sandbox and mot.evaluation.passk ({e})") from None
    outcomes = [check_python_program(build_program(item, c), timeout_s) for c in completions]
    passed = [_passed(o) for o in outcomes]
    n, c = len(passed), sum(passed)
    scores = {f"pass@{k}": float(pass_at_k(n, c, k)) for k in ks if k <= n}
    reasons = [None if p else str(getattr(o, "reason", "") or (o.get("reason") if isinstance(o, dict) else ""))
               for o, p in zip(outcomes, passed, strict=True)]
    return {"id": item.id, "completions": list(completions), "passed": passed, "n": n, "c": c,
            "failure_reasons": reasons, "scores": scores}
