"""Prompt-lookup drafts: copied from the context, verified like the heads' drafts."""

from __future__ import annotations

import pytest

from mot.generation import GenerationParams
from mot.multitoken import decode
from mot.multitoken.decoding import ContextLookup

from .conftest import PROMPTS
from .test_decoding import _perturb_heads, _reference


def test_context_lookup_drafts_what_followed_the_latest_match():
    context = ContextLookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 8])
    assert context.drafts(3) == []  # (7, 8) and (4, 7, 8) never occurred before
    context.extend([2, 3, 4])
    assert context.drafts(3) == [7, 8, 2]  # the latest (2, 3, 4) is followed by 7 8 2, not 5 9 2
    assert context.drafts(1) == [7]
    context.extend([6, 3])
    assert context.drafts(4) == []  # neither (4, 6, 3) nor (6, 3) occurred before
    context.extend([4])
    assert context.drafts(4) == [6, 3, 4]  # no earlier (6, 3, 4): the latest (3, 4), up to the context's end
    assert ContextLookup([5]).drafts(2) == []


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_lookup_decoding_is_exact_and_drafts_from_the_context(make_model, family):
    model = make_model(family, num_heads=3, k_max=3)
    _perturb_heads(model)
    looked = kept = 0
    for prompt in PROMPTS[:6]:
        repeated = prompt * 3  # a prompt that repeats itself gives the lookup something to copy
        reference = _reference(model, repeated, 24)
        result = decode(model, repeated, GenerationParams(max_new_tokens=24), lookup=5)
        assert result.token_ids == reference, prompt
        looked += result.stats.lookup_passes
        kept += result.stats.lookup_accepted
        assert decode(model, repeated, GenerationParams(max_new_tokens=24)).stats.lookup_passes == 0
    assert looked > 0 and kept > 0
    sampled = decode(model, PROMPTS[1] * 3, GenerationParams(max_new_tokens=12, temperature=0.7, seed=1), lookup=4)
    assert len(sampled.token_ids) == 12
    with pytest.raises(ValueError, match="lookup"):
        decode(model, PROMPTS[0], lookup=-1)
