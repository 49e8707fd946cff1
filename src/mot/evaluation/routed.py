"""Routed evaluation models: a router over a pool of experts, each expert scored by one shared scorer.

``RoutedModel``
    Each question (the multiple-choice context, or the generation prompt) is routed once and the routed
    expert alone scores or answers it, through the same :class:`~mot.evaluation.hf_model.HFModel` that
    scores that expert on its own row, so a routed row is, item for item, the routed expert's result.
    ``route(texts) -> [expert index]`` is any function: a Mixture of Thoughts' router (its ``fast``
    mode, ``mot.thoughts.scoring``), a trained baseline router (RouterDC, cluster routing), a fixed expert.
    ``vote=N`` (N > 1) makes a generative answer Avengers' repeated-sampling vote: the routed expert
    samples N answers and the majority final answer wins (see the class docstring).

``Memoized``
    An expert scorer that remembers its answers, so that rows sharing an expert never recompute (and
    never differ in the last bits because of a different batch).

``expert_scorer``
    The ``HFModel`` an expert is scored with, alone or routed to: a BOS first when its tokenizer adds
    one by itself (as the expert sees text inside a Mixture of Thoughts).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from mot.errors import MotError, UsageError
from mot.evaluation import scoring
from mot.evaluation.hf_model import HFModel
from mot.evaluation.scoring import LogLikelihood
from mot.generation import GREEDY_BELOW, GenerationParams

AnswerKey = Callable[[str], str | None]  # a generation -> its final answer (None: it gives none)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer's own encoding (``add_special_tokens=True``) prepends its BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return with_special == [bos, *without]


def expert_scorer(model: Any, tokenizer: Any, name: str, *, batch_size: int = 8,
                  chat_template: bool = False) -> HFModel:
    """The ``HFModel`` an expert is scored with, alone or routed to (a BOS first when its tokenizer adds
    one, as the expert sees text inside a Mixture of Thoughts)."""
    return HFModel(model, tokenizer, name=name, batch_size=batch_size, add_bos=tokenizer_adds_bos(tokenizer),
                   use_chat_template=chat_template)


# ------------------------------------------------------------------------- repeated-sampling vote

def _math_key(text: str) -> str | None:
    answer = scoring.extract_math_answer(text)
    return None if answer is None else scoring.normalize_math_answer(answer)


def _qa_key(text: str) -> str | None:
    return scoring.normalize_text(text) or None


# How each generative task reduces a reply to the answer it is scored on: the extractor (and normaliser)
# of mot.evaluation.scoring.score_generation, so that the votes count exactly what scoring compares.
ANSWER_KEYS: dict[str, AnswerKey] = {"gsm8k": scoring.extract_gsm8k_answer, "math": _math_key, "qa": _qa_key}


def task_answer_key(task: str) -> AnswerKey:
    """The answer a reply to a ``task`` item (``gsm8k``, ``math``, ``qa``) is scored on, for a vote."""
    if task not in ANSWER_KEYS:
        raise UsageError(f"a vote needs a benchmark whose answers are extracted and compared "
                         f"({', '.join(ANSWER_KEYS)}); {task!r} has none")
    return ANSWER_KEYS[task]


def parse_vote(value: object) -> int:
    """``--vote N`` (a string, or an int from a config) as an int >= 1; anything else is a ``UsageError``."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+]?\d+", text) or int(text) < 1:
        raise UsageError(f"--vote expects a whole number of samples >= 1 (1: no vote), got {value!r}")
    return int(text)


def check_vote(vote: int, temperature: float, top_p: float) -> None:
    """A ``UsageError`` unless ``vote`` is an int >= 1 and, for a vote, the samples really sample."""
    parse_vote(vote)
    if vote > 1 and not temperature >= GREEDY_BELOW:
        raise UsageError(f"a vote of {vote} samples needs a sampling temperature > 0 (greedy samples are all "
                         f"the same answer), got {temperature}")
    if vote > 1 and not 0.0 < top_p <= 1.0:
        raise UsageError(f"the vote's top_p must be in (0, 1], got {top_p}")


def vote_options(task: str, vote: int, *, temperature: float = 0.7, top_p: float = 0.95) -> dict[str, Any]:
    """The :class:`RoutedModel` options of a vote of ``vote`` samples on a ``task`` benchmark (checked);
    ``{}`` for no vote, and for a task without extracted answers (multiple choice, code), which is scored
    as without a vote."""
    check_vote(vote, temperature, top_p)
    if vote == 1 or task not in ANSWER_KEYS:
        return {}
    return {"vote": vote, "answer_key": task_answer_key(task), "vote_temperature": temperature, "vote_top_p": top_p}


def majority_vote(answers: Sequence[str | None]) -> int:
    """Index of the reply to keep among samples whose final answers are ``answers``: the first sample of
    the most frequent answer; a tie goes to the answer sampled first; samples without an answer (None)
    do not vote, and when none has one the first sample is kept."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return answers.index(winner)


class RoutedModel:
    """Route each question to one expert of ``experts``; that expert's scorer answers it.

    Log-likelihoods (multiple choice) are always the routed expert's own numbers.

    ``vote`` (Avengers-style repeated sampling, for generative requests): with ``vote == 1`` (the default)
    the routed expert generates once with the caller's ``params``, exactly as on its own row.  With
    ``vote = N > 1`` it samples ``N`` replies with the caller's ``params`` but ``temperature =
    vote_temperature`` and ``top_p = vote_top_p``; sample ``s`` uses seed ``base + s``, ``base`` being
    ``vote_seed``, else the caller's ``params.seed`` (``run_evaluation`` gives each batch its own), else 0,
    so a rerun returns the very same replies.  ``answer_key(reply)`` reduces each sample to its final
    answer and the reply returned is the first sample of the majority answer (:func:`majority_vote`).

    The model only ever sees prompts (``run_evaluation`` calls ``generate(prompts, params)`` and knows
    nothing of a vote), so the answer key is given here, by whoever knows the benchmark:
    ``task_answer_key(task)`` is the benchmark's own extractor (``mot eval run --vote N`` passes it for the
    benchmark it runs).  ``self.votes`` keeps, per routed text, the answers of its last vote.
    """

    def __init__(self, name: str, route: Callable[[list[str]], list[int]], experts: Sequence[HFModel], *,
                 vote: int = 1, answer_key: AnswerKey | None = None, vote_temperature: float = 0.7,
                 vote_top_p: float = 0.95, vote_seed: int | None = None):
        if not experts:
            raise UsageError("a routed model needs at least one expert")
        check_vote(vote, vote_temperature, vote_top_p)
        if vote > 1 and answer_key is None:
            raise UsageError(f"{name}: a vote of {vote} samples needs answer_key, the reply -> final answer "
                             "function of the benchmark (mot.evaluation.routed.task_answer_key(task))")
        self.name = name
        self.route = route
        self.experts = list(experts)
        self.vote, self.answer_key = int(vote), answer_key
        self.vote_temperature, self.vote_top_p, self.vote_seed = vote_temperature, vote_top_p, vote_seed
        self.routed: dict[str, int] = {}  # text -> expert index, for reports
        self.votes: dict[str, list[str | None]] = {}  # text -> the sampled answers, for reports

    def picks(self, texts: list[str]) -> list[int]:
        """The expert index each text is routed to (routed once, remembered in ``self.routed``)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.routed]
        if todo:
            picks = self.route(todo)
            if len(picks) != len(todo):
                raise MotError(f"{self.name}: the router returned {len(picks)} decisions for {len(todo)} texts")
            for text, pick in zip(todo, picks, strict=True):
                if not 0 <= int(pick) < len(self.experts):
                    raise MotError(f"{self.name}: routed to expert {pick}, but there are {len(self.experts)}")
                self.routed[text] = int(pick)
        return [self.routed[t] for t in texts]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        picks = self.picks([c for c, _ in requests])
        results: list[LogLikelihood | None] = [None] * len(requests)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, pick in enumerate(picks):
            groups[pick].append(i)
        for pick, rows in groups.items():
            for i, r in zip(rows, self.experts[pick].loglikelihood([requests[i] for i in rows]), strict=True):
                results[i] = r
        return results  # type: ignore[return-value]

    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[str]:
        texts = [self.experts[0].prompt_text(p) if not isinstance(p, str) else p for p in prompts]
        picks = self.picks(texts)
        replies: list[str] = [""] * len(prompts)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, pick in enumerate(picks):
            groups[pick].append(i)
        for pick, rows in groups.items():
            asked = [prompts[i] for i in rows]
            if self.vote == 1:
                answers = self.experts[pick].generate(asked, params)
            else:
                answers = self._voted(self.experts[pick], asked, [texts[i] for i in rows], params)
            for i, r in zip(rows, answers, strict=True):
                replies[i] = r
        return replies

    def _voted(self, expert: HFModel, prompts: list[Any], texts: list[str], params: GenerationParams) -> list[str]:
        """Each prompt's majority reply over ``self.vote`` seeded samples (see the class docstring).  Sample
        ``s`` of every prompt comes from one batched ``generate`` call with seed ``base + s``, so the samples
        of a prompt are drawn under different seeds (one call with every copy would reseed each chunk of
        ``batch_size`` alike: with ``batch_size`` 1, every copy would get the same sample)."""
        base = self.vote_seed if self.vote_seed is not None else (params.seed if params.seed is not None else 0)
        samples = [expert.generate(prompts, dataclasses.replace(params, temperature=self.vote_temperature,
                                                                top_p=self.vote_top_p, seed=base + s))
                   for s in range(self.vote)]
        chosen: list[str] = []
        for j, text in enumerate(texts):
            replies = [sample[j] for sample in samples]
            answers = [self.answer_key(r) for r in replies]  # type: ignore[misc]
            self.votes[text] = answers
            chosen.append(replies[majority_vote(answers)])
        return chosen


class Memoized:
    """An expert scorer that remembers its answers: a routed row (or MoT's fast mode) asking for an item
    its expert already scored gets the very same result, not a recomputation (a different batch could
    differ in the last bits).  Greedy decoding only for generation (sampling is not cached)."""

    def __init__(self, inner: HFModel):
        self.inner = inner
        self._ll: dict[tuple[str, str], LogLikelihood] = {}
        self._gen: dict[tuple[str, str], str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        todo = [r for r in dict.fromkeys(map(tuple, requests)) if r not in self._ll]
        if todo:
            self._ll.update(zip(todo, self.inner.loglikelihood(todo), strict=True))
        return [self._ll[tuple(r)] for r in requests]

    def generate(self, prompts: Sequence[Any], params: GenerationParams) -> list[str]:
        if not params.greedy or not all(isinstance(p, str) for p in prompts):
            return self.inner.generate(prompts, params)
        key = repr(dataclasses.replace(params, seed=None))  # greedy: the seed changes nothing
        todo = [p for p in dict.fromkeys(prompts) if (p, key) not in self._gen]
        if todo:
            self._gen.update(((p, key), r) for p, r in zip(todo, self.inner.generate(todo, params), strict=True))
        return [self._gen[(p, key)] for p in prompts]
