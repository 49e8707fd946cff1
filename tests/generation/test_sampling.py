"""The one sampler (``mot.generation.sampling``) and every model kind that samples through it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mot.generation import GenerationParams, filter_logits, sample_next, sample_token, warp_probs
from mot.moellama.generate import filter_logits as moellama_filter_logits
from mot.moellama.generate import sample_tokens as moellama_sample_tokens
from mot.multitoken.decoding import _Picker
from mot.multitoken.decoding import warp_probs as multitoken_warp_probs
from mot.thoughts.generation import sample_token as thoughts_sample_token

# Exact in fp32 (softmax gives back .125, .5, .125, .25).  Sorted: .5 (token 1), .25 (token 3), then .125s.
# At top_p = .5 the first token reaches top_p on its own: the nucleus is {1}.  At .75 the first two reach it
# exactly: {1, 3}.  A ">" rule (drop only once the mass above *exceeds* top_p) would keep one more token
# in both cases -- the rule multitoken used before.
PROBS = [0.125, 0.5, 0.125, 0.25]
LOGITS = torch.log(torch.tensor(PROBS))
NUCLEUS = {0.5: [False, True, False, False], 0.75: [False, True, False, True], 0.9: [True] * 4}


class _FixedLogitsLlama:
    """Stands in for a moellama model in ``sample_tokens``: the same next-token logits at every step."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.cfg = SimpleNamespace(max_seq_len=10_000)

    def __call__(self, tokens, attention_mask=None, positions=None, cache=None):
        return SimpleNamespace(logits=self.logits.expand(tokens.shape[0], tokens.shape[1], -1))


def _kept_by_sampling(pick, draws: int = 400) -> list[bool]:
    seen = {pick() for _ in range(draws)}
    return [i in seen for i in range(len(PROBS))]


def test_the_distribution_is_exact_so_the_boundary_is_a_tie():
    assert LOGITS.softmax(-1).tolist() == PROBS


@pytest.mark.parametrize("top_p", sorted(NUCLEUS))
def test_top_p_boundary_matches_hugging_face(top_p):
    from transformers.generation.logits_process import TopPLogitsWarper

    hf = torch.isfinite(TopPLogitsWarper(top_p)(None, LOGITS[None].clone()))[0].tolist()
    assert hf == NUCLEUS[top_p]
    assert torch.isfinite(filter_logits(LOGITS, top_p=top_p)).tolist() == NUCLEUS[top_p]


def test_top_p_matches_hugging_face_on_random_distributions():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    for top_p in (0.1, 0.5, 0.8, 0.95):
        logits = torch.randn(16, 50, generator=g) * 3
        hf = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
        assert torch.equal(torch.isfinite(filter_logits(logits, top_p=top_p)), hf)


@pytest.mark.parametrize("top_p", [0.5, 0.75])
def test_every_kind_keeps_the_token_that_reaches_top_p_and_nothing_after_it(top_p):
    expected = NUCLEUS[top_p]
    params = GenerationParams(temperature=1.0, top_p=top_p)
    # thoughts: sample_token
    g = torch.Generator().manual_seed(1)
    assert _kept_by_sampling(lambda: thoughts_sample_token(LOGITS, params, g)) == expected
    # moellama: filter_logits and the KV-cached sampling loop
    assert torch.isfinite(moellama_filter_logits(LOGITS[None], top_p=top_p))[0].tolist() == expected
    g = torch.Generator().manual_seed(2)
    steps = moellama_sample_tokens(_FixedLogitsLlama(LOGITS), torch.zeros(4, 1, dtype=torch.long), 100,
                                   temperature=1.0, top_p=top_p, generator=g)
    seen = set(torch.stack(list(steps)).reshape(-1).tolist())
    assert [i in seen for i in range(len(PROBS))] == expected
    # multitoken: warp_probs and the decoder's picker
    kept = (multitoken_warp_probs(LOGITS, 1.0, top_p=top_p) > 0).tolist()
    assert kept == expected
    picker = _Picker(GenerationParams(temperature=1.0, top_p=top_p, seed=3), torch.device("cpu"))
    assert _kept_by_sampling(lambda: picker.pick(LOGITS)) == expected
    assert (picker.probs(LOGITS) > 0).tolist() == expected


def test_nucleus_probabilities_are_renormalised():
    probs = warp_probs(LOGITS, 1.0, top_p=0.75)
    assert probs.tolist() == pytest.approx([0.0, 2 / 3, 0.0, 1 / 3])
    assert warp_probs(LOGITS, 1.0, top_p=0.01).tolist() == [0.0, 1.0, 0.0, 0.0]  # the top token always stays


# -- the old samplers, as they were, to check the shared one against ----------------------------
def _old_thoughts_sample_token(logits, params, generator):
    logits = logits.float()
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(-1) - probs >= params.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=generator))


def _old_moellama_filter_logits(logits, top_k=0, top_p=1.0):
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _old_multitoken_warp_probs(logits, temperature, top_k=0, top_p=1.0):
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        probs = probs / probs.sum()
    return probs


SETTINGS = [(0, 1.0), (5, 1.0), (0, 0.9), (7, 0.6), (1, 0.3)]


def test_greedy_is_the_argmax_of_every_old_sampler():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(32, 100, generator=g) * 2
    greedy = GenerationParams(temperature=0.0, top_k=5, top_p=0.5)
    argmax = logits.argmax(-1)
    assert torch.equal(sample_next(logits, greedy), argmax)
    for row, best in zip(logits, argmax.tolist(), strict=True):
        assert sample_token(row, greedy) == _old_thoughts_sample_token(row, greedy, None) == best
        assert thoughts_sample_token(row, greedy, None) == best
        assert _Picker(greedy, torch.device("cpu")).pick(row) == best
        assert int(_old_multitoken_warp_probs(row, 1.0).argmax()) == best
    steps = moellama_sample_tokens(_FixedLogitsLlama(logits[:, None]), torch.zeros(32, 1, dtype=torch.long), 3)
    assert all(torch.equal(step, argmax) for step in steps)


@pytest.mark.parametrize(("top_k", "top_p"), SETTINGS)
def test_sampling_equals_the_old_samplers(top_k, top_p):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 60, generator=g) * 2
    params = GenerationParams(temperature=0.7, top_k=top_k, top_p=top_p, seed=0)
    scaled = logits / 0.7
    # moellama and thoughts: the same filter, bit for bit, hence the same draws for a seed
    assert torch.equal(filter_logits(scaled, top_k, top_p), _old_moellama_filter_logits(scaled, top_k, top_p))
    for row in logits:
        new_g, old_g = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
        new = [thoughts_sample_token(row, params, new_g) for _ in range(20)]
        assert new == [_old_thoughts_sample_token(row, params, old_g) for _ in range(20)]
    new_g, old_g = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    new = sample_next(logits, params, new_g)
    old = torch.multinomial(_old_moellama_filter_logits(scaled, top_k, top_p).softmax(-1), 1, generator=old_g)[:, 0]
    assert torch.equal(new, old)
    # multitoken: the same distribution (no ties at the boundary in random logits), up to rounding
    for row in logits:
        assert torch.allclose(warp_probs(row, 0.7, top_k, top_p), _old_multitoken_warp_probs(row, 0.7, top_k, top_p),
                              atol=1e-6)


def test_moellama_greedy_follows_generation_params_not_temperature_zero():
    """A tiny positive temperature is greedy everywhere (``GenerationParams.greedy``), moellama included."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 1, 20, generator=g)
    tiny = GenerationParams(temperature=1e-5).temperature
    assert GenerationParams(temperature=tiny).greedy
    steps = moellama_sample_tokens(_FixedLogitsLlama(logits), torch.zeros(3, 1, dtype=torch.long), 2, temperature=tiny)
    assert all(torch.equal(step, logits[:, 0].argmax(-1)) for step in steps)


def test_top_k_keeps_ties_at_the_kth_value_and_temperature_scales():
    logits = torch.tensor([3.0, 1.0, 1.0, 0.0])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [True, True, True, False]
    hot = warp_probs(logits, 2.0)
    assert hot.tolist() == pytest.approx((logits / 2).softmax(-1).tolist())
    assert math.isclose(float(hot.sum()), 1.0, rel_tol=1e-6)
