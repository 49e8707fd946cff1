"""MoT scored through the harness: a zero-gate MoT scores exactly like its primary expert (multiple choice,
generative, code) in both modes; open gates change full-mode scores; one forward per question for
single-token continuations gives the per-choice numbers; routed baselines equal their routed expert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mot.data import load_benchmark
from mot.evaluation.routed import RoutedModel, expert_scorer
from mot.evaluation.runner import run_evaluation
from mot.evaluation.scoring import format_multiple_choice
from mot.generation import GenerationParams
from mot.routing import build_router
from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig
from mot.thoughts.scoring import MoTModel
from tests.thoughts.helpers import FAMILIES, randomise_interaction

FIX = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def trio(load_tiny):
    return [load_tiny(f) for f in FAMILIES]


@pytest.fixture(scope="module")
def scorers(trio):
    return [expert_scorer(m, t, name=f) for (m, t), f in zip(trio, FAMILIES, strict=True)]


def make_mot(trio, primary: int, gate: float, top_k: int = 3) -> MixtureOfThoughts:
    options = {"num_stacks": 2, "top_k": top_k, "interaction_heads": 4, "dropout": 0.0, "router_hidden_dim": 16}
    mot = MixtureOfThoughts([m for m, _ in trio], [t for _, t in trio], MoTConfig(**options),
                            expert_specs=list(FAMILIES), encoder=HashingEncoder(32), seed=0)
    randomise_interaction(mot, gate, seed=1)
    mot.router = build_router("fixed", 32, 3, top_k, expert=primary)  # pin the primary
    return mot.eval()


def _records(tmp_path, name, model, benchmark, items, **kwargs):
    results = run_evaluation(benchmark, {name: model}, items, tmp_path / name, progress=False, report=False,
                             **kwargs)
    import json

    path = tmp_path / name / results["models"][name]["partial_file"]
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("primary", [0, 1, 2])
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_zero_gate_mot_scores_multiple_choice_like_its_primary(trio, scorers, tmp_path, primary, mode):
    items = load_benchmark("mmlu", FIX / "mmlu") + load_benchmark("arc_challenge", FIX / "arc_challenge")
    mot = MoTModel(make_mot(trio, primary, gate=0.0), scorers, mode=mode, name="mot")
    for style in ("letters", "text"):
        requests = [(c, x) for it in items for c, conts in [format_multiple_choice(it, style)] for x in conts]
        ours, theirs = mot.loglikelihood(requests), scorers[primary].loglikelihood(requests)
        for a, b in zip(ours, theirs, strict=True):
            assert a.num_tokens == b.num_tokens and a.is_greedy == b.is_greedy
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    mc = [it for it in items if it.subject]  # the MMLU items through the runner: identical per-item records
    got = _records(tmp_path, f"mot-{mode}", mot, "mmlu", mc)
    want = _records(tmp_path, "expert", scorers[primary], "mmlu", mc)
    assert {i: (r["pred"], r["scores"]) for i, r in got.items()} == {i: (r["pred"], r["scores"]) for i, r in want.items()}


def test_open_gates_change_full_mode_scores_but_not_fast(trio, scorers):
    items = load_benchmark("mmlu", FIX / "mmlu")
    requests = [(c, x) for it in items for c, conts in [format_multiple_choice(it)] for x in conts]
    mot = make_mot(trio, 1, gate=1.0)
    base = scorers[1].loglikelihood(requests)
    full = MoTModel(mot, scorers, mode="full").loglikelihood(requests)
    fast = MoTModel(mot, scorers, mode="fast").loglikelihood(requests)
    assert [r.logprob for r in fast] == [r.logprob for r in base]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(full, base, strict=True)) > 1e-3


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_one_forward_per_question_equals_the_per_choice_path(trio, scorers, mode):
    items = load_benchmark("mmlu", FIX / "mmlu")
    # continuations that are one token for every tiny tokenizer (their " A" is two), plus the letters
    words = [" the", " and", " of", " in"]
    requests = [(c, x) for it in items for c, conts in [format_multiple_choice(it)] for x in [*words, *conts]]
    models = [MoTModel(make_mot(trio, p, gate=1.0), scorers, mode=mode) for p in range(3)]
    for model in [*models, *scorers]:
        shared = model.loglikelihood(requests)
        model.share_context = False
        for s in scorers:
            s.share_context = False
        try:
            alone = model.loglikelihood(requests)
        finally:
            model.share_context = True
            for s in scorers:
                s.share_context = True
        for a, b in zip(shared, alone, strict=True):
            assert a.num_tokens == b.num_tokens and a.is_greedy == b.is_greedy
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    # one forward per question: count the model calls on one expert
    model, tok = trio[0]
    counter = {"rows": 0}
    hook = model.register_forward_hook(lambda m, args, kwargs, out: counter.__setitem__(
        "rows", counter["rows"] + kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        scorers[0].loglikelihood(requests)
    finally:
        hook.remove()
    encoded = [scorers[0].encode_pair(c, x) for c, x in requests]
    singles = {tuple(ctx) for ctx, cont in encoded if len(cont) == 1}
    assert singles, "the letters should be single tokens for at least some items"
    assert counter["rows"] == len(singles) + sum(len(cont) > 1 for _, cont in encoded)


@pytest.mark.parametrize("primary", [0, 1, 2])
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_zero_gate_mot_generates_like_its_primary_gsm8k_and_code(trio, scorers, tmp_path, primary, mode):
    mot = MoTModel(make_mot(trio, primary, gate=0.0), scorers, mode=mode)
    params = GenerationParams(max_new_tokens=12)
    gsm = load_benchmark("gsm8k", FIX / "gsm8k")[:3]
    got = _records(tmp_path, f"mot-{mode}", mot, "gsm8k", gsm, params=params)
    want = _records(tmp_path, "expert", scorers[primary], "gsm8k", gsm, params=params)
    assert {i: r["prediction"] for i, r in got.items()} == {i: r["prediction"] for i, r in want.items()}
    code = load_benchmark("humaneval", FIX / "humaneval")[:2]
    got = _records(tmp_path, f"mot-{mode}-code", mot, "humaneval", code, params=params, timeout_s=5.0)
    want = _records(tmp_path, "expert-code", scorers[primary], "humaneval", code, params=params, timeout_s=5.0)
    assert {i: (r["completions"], r["scores"]) for i, r in got.items()} == \
        {i: (r["completions"], r["scores"]) for i, r in want.items()}


def test_routed_model_is_its_routed_expert_item_for_item(scorers, tmp_path):
    items = load_benchmark("mmlu", FIX / "mmlu")
    contexts = {format_multiple_choice(it)[0]: i % 3 for i, it in enumerate(items)}
    routed = RoutedModel("routed", lambda texts: [contexts[t] for t in texts], scorers)
    got = _records(tmp_path, "routed", routed, "mmlu", items)
    for e, scorer in enumerate(scorers):
        want = _records(tmp_path, f"e{e}", scorer, "mmlu", items)
        for i, it in enumerate(items):
            if i % 3 == e:
                assert got[it.id]["logprobs"] == want[it.id]["logprobs"]
    torch.testing.assert_close(torch.tensor(1.0), torch.tensor(1.0))
