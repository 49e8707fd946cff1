"""Avengers-style repeated-sampling vote of routed models (``RoutedModel(vote=N)``, ``mot eval run --vote N``):
vote 1 is the routed expert's own greedy reply; a vote returns the first sample of the majority final answer,
extracted by the benchmark's own scorer; samples are seeded (reruns are identical, and each sample of a prompt
has its own seed); multiple choice never votes; a bad --vote is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mot.data import load_benchmark
from mot.errors import UsageError
from mot.evaluation import scoring
from mot.evaluation.routed import RoutedModel, expert_scorer, majority_vote, task_answer_key, vote_options
from mot.evaluation.runner import run_evaluation
from mot.evaluation.scoring import format_multiple_choice, generative_prompt
from mot.generation import GenerationParams

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module")
def scorers(load_tiny):
    return [expert_scorer(*load_tiny(f), name=f) for f in FAMILIES]


def _records(tmp_path, name, model, benchmark, items, **kwargs) -> dict[str, dict]:
    results = run_evaluation(benchmark, {name: model}, items, tmp_path / name, progress=False, report=False,
                             **kwargs)
    path = tmp_path / name / results["models"][name]["partial_file"]
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _alternate(texts_in_order: list[str]):
    """A router sending the i-th known text to expert i % 2."""
    picks = {t: i % 2 for i, t in enumerate(texts_in_order)}
    return lambda texts: [picks[t] for t in texts]


class ScriptedExpert:
    """An expert whose k-th sample of a prompt is ``script[prompt][k]``; it records every call's params."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.seen: dict[str, int] = {}
        self.calls: list[GenerationParams] = []

    def generate(self, prompts, params):
        self.calls.append(params)
        replies = []
        for p in prompts:
            k = self.seen.get(p, 0)
            self.seen[p] = k + 1
            replies.append(self.script[p][k])
        return replies


class Recording:
    """A real expert scorer that records each ``generate`` call's params and replies."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.calls: list[tuple[GenerationParams, list[str]]] = []

    def generate(self, prompts, params):
        replies = self.inner.generate(prompts, params)
        self.calls.append((params, replies))
        return replies


# ----------------------------------------------------------------------------------- (a) vote 1 = no vote


def test_vote_1_is_the_routed_experts_greedy_reply_item_for_item(scorers, tmp_path):
    items = load_benchmark("gsm8k", FIX / "gsm8k")
    prompts = [generative_prompt(it, "gsm8k")[0] for it in items]
    params = GenerationParams(max_new_tokens=12)
    rows = {"plain": RoutedModel("plain", _alternate(prompts), scorers),
            "vote1": RoutedModel("vote1", _alternate(prompts), scorers, vote=1,
                                 answer_key=task_answer_key("gsm8k"), vote_temperature=1.0, vote_seed=5)}
    want = [_records(tmp_path, f"e{e}", s, "gsm8k", items, params=params) for e, s in enumerate(scorers)]
    for name, model in rows.items():
        got = _records(tmp_path, name, model, "gsm8k", items, params=params)
        assert [got[it.id]["prediction"] for it in items] == \
            [want[i % 2][it.id]["prediction"] for i, it in enumerate(items)]
        assert model.votes == {}
    direct = [scorers[i % 2].generate([p], params)[0] for i, p in enumerate(prompts)]
    assert rows["vote1"].generate(prompts, params) == direct


# ------------------------------------------------------------------------------- (b) the majority answer


def test_majority_vote_first_sample_of_the_most_frequent_answer():
    assert majority_vote(["7", "3", "7"]) == 0
    assert majority_vote(["3", "7", "7"]) == 1
    assert majority_vote(["3", "7"]) == 0  # a tie: the answer sampled first
    assert majority_vote(["7", "3", "3", "7"]) == 0
    assert majority_vote([None, "5", None]) == 1  # samples without an answer do not vote
    assert majority_vote([None, None]) == 0


def test_vote_returns_a_sample_of_the_majority_gsm8k_answer():
    prompt = "Question: how many?\nAnswer:"
    replies = ["2 and 5 make #### 7", "It is 3.", "so the total is $7.00"]
    assert [scoring.extract_gsm8k_answer(r) for r in replies] == ["7", "3", "7"]
    expert = ScriptedExpert({prompt: replies})
    model = RoutedModel("v", lambda texts: [0] * len(texts), [expert], vote=3,
                        answer_key=task_answer_key("gsm8k"), vote_temperature=0.9, vote_top_p=0.8)
    params = GenerationParams(max_new_tokens=40, stop=["Question:"], seed=11)
    got = model.generate([prompt], params)
    assert got == ["2 and 5 make #### 7"]
    assert scoring.extract_gsm8k_answer(got[0]) == "7"
    assert model.votes == {prompt: ["7", "3", "7"]}
    # every sample: the caller's length and stops, the vote's temperature and top-p, seeds 11, 12, 13
    assert [(c.temperature, c.top_p, c.max_new_tokens, c.stop, c.seed) for c in expert.calls] == \
        [(0.9, 0.8, 40, ["Question:"], 11 + s) for s in range(3)]


def test_voted_replies_score_as_their_majority_answer():
    items = load_benchmark("gsm8k", FIX / "gsm8k")  # references 10, 2,500, -3
    prompts = [generative_prompt(it, "gsm8k")[0] for it in items]
    script = {prompts[0]: ["I think 10", "#### 12", "so #### 10"],
              prompts[1]: ["#### 7", "#### 2,500", "2500 pens"],
              prompts[2]: ["#### 3", "#### -3", "#### 3"]}
    model = RoutedModel("v", lambda texts: [0] * len(texts), [ScriptedExpert(script)],
                        **vote_options("gsm8k", 3, temperature=0.7))
    records = model.generate(prompts, GenerationParams(max_new_tokens=8))
    assert records == ["I think 10", "#### 2,500", "#### 3"]
    scored = [scoring.score_generation(it, r, "gsm8k") for it, r in zip(items, records, strict=True)]
    assert [(s["extracted"], s["scores"]["exact_match"]) for s in scored] == [("10", 1.0), ("2500", 1.0), ("3", 0.0)]


def test_math_and_qa_votes_count_what_their_scoring_compares():
    assert task_answer_key("math")("so \\boxed{\\dfrac{1}{2}}") == task_answer_key("math")("\\boxed{\\frac12}")
    assert task_answer_key("qa")("  Paris. ") == task_answer_key("qa")("paris") == "paris"
    with pytest.raises(UsageError, match="extracted"):
        task_answer_key("multiple_choice")
    assert vote_options("multiple_choice", 3) == {} and vote_options("code", 3) == {}
    assert vote_options("gsm8k", 1) == {}


# --------------------------------------------------------------------------------------------- (c) seeds


def test_votes_are_seeded_reruns_identical_and_samples_differ(scorers, load_tiny):
    items = load_benchmark("gsm8k", FIX / "gsm8k")
    prompts = [generative_prompt(it, "gsm8k")[0] for it in items]
    params = GenerationParams(max_new_tokens=12)
    runs = []
    for _ in range(2):
        # batch_size 1: one call per sample keeps the samples of a prompt apart even then
        expert = Recording(expert_scorer(*load_tiny("gpt2"), name="gpt2", batch_size=1))
        model = RoutedModel("v", lambda texts: [0] * len(texts), [expert],
                            **vote_options("gsm8k", 3, temperature=1.0, top_p=1.0))
        runs.append((model.generate(prompts, params), expert.calls, dict(model.votes)))
    (got, calls, votes), (again, calls_again, votes_again) = runs
    assert got == again and votes == votes_again
    assert [c[1] for c in calls] == [c[1] for c in calls_again]
    assert [c[0].seed for c in calls] == [0, 1, 2]  # no seed given: base 0
    samples = [[call[1][j] for call in calls] for j in range(len(prompts))]
    assert any(len(set(s)) > 1 for s in samples)  # sampled, not three greedy copies
    for j, prompt in enumerate(prompts):
        answers = [task_answer_key("gsm8k")(r) for r in samples[j]]
        assert votes[prompt] == answers
        assert got[j] == samples[j][majority_vote(answers)]
    # another seed draws other samples
    other = RoutedModel("v", lambda texts: [0] * len(texts), [Recording(scorers[0])],
                        **vote_options("gsm8k", 3, temperature=1.0, top_p=1.0), vote_seed=100)
    other.generate(prompts, params)
    assert [c[0].seed for c in other.experts[0].calls] == [100, 101, 102]
    assert [c[1] for c in other.experts[0].calls] != [c[1] for c in calls]


# ---------------------------------------------------------------------------------- (d) multiple choice


def test_multiple_choice_scores_are_unchanged_by_the_vote(scorers, tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu")
    contexts = [format_multiple_choice(it)[0] for it in items]
    plain = RoutedModel("plain", _alternate(contexts), scorers)
    voted = RoutedModel("voted", _alternate(contexts), scorers, **vote_options("gsm8k", 5))
    got, want = _records(tmp_path, "voted", voted, "mmlu", items), _records(tmp_path, "plain", plain, "mmlu", items)
    assert {i: (r["logprobs"], r["scores"]) for i, r in got.items()} == \
        {i: (r["logprobs"], r["scores"]) for i, r in want.items()}
    assert voted.votes == {}


# -------------------------------------------------------------------------------- (e) bad values, the CLI


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "three"])
def test_a_bad_vote_is_one_error_line(value, capsys):
    from mot.cli.main import main

    code = main(["eval", "run", "-b", "gsm8k", "--data", str(FIX / "gsm8k"), "--model", "r=unused",
                 "--vote", value, "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        [f"error: --vote expects a whole number of samples >= 1 (1: no vote), got {value!r}"]


def test_a_greedy_vote_is_one_error_line(capsys):
    from mot.cli.main import main

    code = main(["eval", "run", "-b", "gsm8k", "--data", str(FIX / "gsm8k"), "--model", "r=unused",
                 "--vote", "3", "--vote-temperature", "0", "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        ["error: a vote of 3 samples needs a sampling temperature > 0 (greedy samples are all the same answer), "
         "got 0.0"]


def test_routed_model_refuses_a_bad_vote_or_a_vote_without_answer_key(scorers):
    for bad in (0, 2.0, True):
        with pytest.raises(UsageError, match="whole number"):
            RoutedModel("v", lambda texts: [0] * len(texts), scorers, vote=bad, answer_key=str)
    with pytest.raises(UsageError, match="needs answer_key"):
        RoutedModel("v", lambda texts: [0] * len(texts), scorers, vote=3)


def test_cli_vote_row_of_a_router_checkpoint_is_seeded(tmp_path, tiny_experts, capsys):
    from mot.cli.main import main
    from mot.routing import build_router
    from mot.routing.checkpoint import save_router

    experts = [str(tiny_experts[f].path) for f in FAMILIES]
    save_router(build_router("fixed", 32, 2, 1, expert=1), tmp_path / "r", {"expert": 1}, experts=experts,
                encoder="hashing-32")
    args = ["eval", "run", "-b", "gsm8k", "--data", str(FIX / "gsm8k"), "--model", f"cl={tmp_path / 'r'}",
            "--max-new-tokens", "8", "--vote", "3", "--no-progress"]
    predictions = []
    for out in ("a", "b"):
        assert main([*args, "-o", str(tmp_path / out)]) == 0, capsys.readouterr().err
        res = json.loads((tmp_path / out / "results.json").read_text())
        assert list(res["models"]) == ["cl:vote3"]
        lines = (tmp_path / out / res["models"]["cl:vote3"]["partial_file"]).read_text().splitlines()
        predictions.append([json.loads(line)["prediction"] for line in lines])
    assert predictions[0] == predictions[1] and len(predictions[0]) == 3
    # multiple choice: the vote does not apply, the row keeps its name and says so
    assert main(["eval", "run", "-b", "mmlu", "--data", str(FIX / "mmlu"), "--model", f"cl={tmp_path / 'r'}",
                 "--vote", "3", "--no-progress", "-o", str(tmp_path / "mc")]) == 0
    assert "is scored without a vote" in capsys.readouterr().err
    assert list(json.loads((tmp_path / "mc" / "results.json").read_text())["models"]) == ["cl"]
