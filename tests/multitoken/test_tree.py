"""Tree verification: a tree of drafts checked in one pass through a tree attention mask is still exactly the
backbone's greedy ``generate()``, whichever branch is accepted; the cache keeps only the accepted path."""

from __future__ import annotations

import pytest
import torch

from mot.generation import GenerationParams
from mot.multitoken import decode
from mot.multitoken.decoding import DecodeStats, decode_tokens

from .conftest import PROMPTS
from .test_decoding import _perturb_heads, _reference


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_tree_decoding_equals_backbone_generate(make_model, family):
    model = make_model(family, num_heads=4, k_max=4)
    _perturb_heads(model)
    drafted = 0
    for prompt in PROMPTS[:6]:
        result = decode(model, prompt, GenerationParams(max_new_tokens=16), tree=6)
        assert result.token_ids == _reference(model, prompt), prompt
        drafted += sum(result.stats.drafted.values())
    assert drafted > 0


def test_tree_shape_best_first_and_ancestor_closed(make_model):
    model = make_model("llama", num_heads=4, k_max=4)
    _perturb_heads(model)
    hidden = model.backbone_step(model.encode(PROMPTS[0]))[0][0, -1]
    nodes = model.heads.draft_tree(hidden, [1, 2, 3], 7, width=3, budget=7)
    assert 3 <= len(nodes) <= 7
    for row, (parent, _) in enumerate(nodes, start=1):
        assert 0 <= parent < row  # depth-first: a parent comes before its children
    # nodes 1..3 are the top-1 chain: each the best child of the one before, as draft_tokens would pick
    assert [parent for parent, _ in nodes[:3]] == [0, 1, 2]
    assert [token for _, token in nodes[:3]] == model.heads.draft_tokens(hidden, [1, 2, 3], 7)
    assert model.heads.draft_tree(hidden, [], 7, width=3, budget=5) == []
    assert len(model.heads.draft_tree(hidden, [1, 2, 3], 7, width=1, budget=9)) == 3  # width 1: the chain


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tree_accepting_side_branches_stays_exact_and_keeps_only_the_path(make_model, family, monkeypatch):
    """Trees whose true continuation sits on a side branch (not the leading rows) force the cache to drop
    positions from the middle; every later token must still be the backbone's, and passes carry > 2 tokens."""
    model = make_model(family, num_heads=4, k_max=4)
    state = {"future": [], "pos": 0, "calls": 0}
    vocab = model.heads.vocab_size

    def oracle_tree(hidden, chain, next_token, *, width, budget, **_):
        state["calls"] += 1
        start = state["pos"]
        truth = state["future"][start + 1:start + 1 + len(chain)]
        truth = truth + [1] * (len(chain) - len(truth))
        wrong = [(t + 1) % vocab for t in truth]
        # a decoy chain first (rows 1..d), the true chain on a side branch; every 4th call cut short
        nodes = [(0, wrong[0])] + [(i + 1, wrong[i + 1]) for i in range(len(chain) - 1)]
        parent = 0
        for depth, token in enumerate(truth):
            if state["calls"] % 4 == 0 and depth == len(truth) - 1:
                token = (token + 2) % vocab
            nodes.append((parent, token))
            parent = len(nodes)
        return nodes

    monkeypatch.setattr(model.heads, "draft_tree", oracle_tree)
    for prompt in PROMPTS[:4]:
        reference = _reference(model, prompt, 32)
        state.update(future=reference, pos=0)
        stats = DecodeStats()
        out = []
        for token in decode_tokens(model, model.encode(prompt), GenerationParams(max_new_tokens=32), stats=stats,
                                   tree=8):
            out.append(token)
            state["pos"] = len(out) - 1
        assert out == reference, prompt
        if len(reference) >= 20:
            assert stats.tokens_per_pass > 2.0


def test_tree_falls_back_to_the_chain_on_sliding_window_caches_and_under_sampling(make_model):
    from mot.multitoken.decoding import _new_cache, _tree_cache

    gemma = make_model("gemma3_text", num_heads=4, k_max=4)  # sliding window 16: no arbitrary drops
    _perturb_heads(gemma)
    ids = gemma.encode(PROMPTS[0])
    assert not _tree_cache(gemma.backbone_step(ids, _new_cache(gemma))[2])
    llama = make_model("llama", num_heads=4, k_max=4)
    assert _tree_cache(llama.backbone_step(llama.encode(PROMPTS[0]), _new_cache(llama))[2])
    for prompt in PROMPTS[:3]:
        assert decode(gemma, prompt, GenerationParams(max_new_tokens=24), tree=6).token_ids == \
            _reference(gemma, prompt, 24)
    model = make_model("llama", num_heads=4, k_max=4)
    _perturb_heads(model)
    params = GenerationParams(max_new_tokens=8, temperature=1.2, seed=5)
    assert decode(model, PROMPTS[1], params, tree=6).token_ids == decode(model, PROMPTS[1], params).token_ids


def test_tree_mask_rows_see_only_their_ancestors(make_model):
    """The logits of each tree row equal a plain causal pass over the root-to-row path."""
    from mot.multitoken.decoding import _new_cache

    model = make_model("llama", num_heads=4, k_max=4)
    ids = model.encode(PROMPTS[2])
    nodes = [(0, 11), (1, 12), (0, 13), (3, 14), (1, 15)]
    cache = model.backbone_step(ids, _new_cache(model))[2]
    past = cache.get_seq_length()
    rows = [[5], [5, 11], [5, 11, 12], [5, 13], [5, 13, 14], [5, 11, 15]]
    mask = torch.zeros(1, 1, 6, past + 6)
    allowed = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0],
                            [1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 1]], dtype=torch.bool)
    mask[0, 0, :, past:] = torch.zeros(6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min)
    positions = torch.tensor([[past, past + 1, past + 2, past + 1, past + 2, past + 2]])
    feed = torch.tensor([[5] + [token for _, token in nodes]])
    logits = model.backbone_step(feed, cache, attention_mask=mask, position_ids=positions)[1][0]
    for row, path in enumerate(rows):
        plain = model.backbone(torch.cat([ids, torch.tensor([path])], 1)).logits[0, -1]
        torch.testing.assert_close(logits[row], plain, rtol=1e-4, atol=1e-4)


def test_tree_with_prompt_lookup_stays_exact_and_the_lookup_sees_tree_tokens(make_model, monkeypatch):
    """Tokens accepted through a tree reach the lookup's index: with a repetitive prompt both sources draft."""
    from mot.multitoken.decoding import ContextLookup

    model = make_model("llama", num_heads=4, k_max=4)
    _perturb_heads(model, scale=0.0)  # heads = the next-token predictor: their trees are often accepted
    prompt = "import os\nimport sys\nimport os\nimport sys\nimport"
    stats = DecodeStats()
    ids = model.encode(prompt)
    tokens = list(decode_tokens(model, ids, GenerationParams(max_new_tokens=24), stats=stats, tree=4, lookup=3))
    assert tokens == _reference(model, prompt, 24)
    assert stats.lookup_passes > 0 and stats.drafted
    seen = []
    original = ContextLookup.extend
    monkeypatch.setattr(ContextLookup, "extend", lambda self, new: (seen.extend(new), original(self, new))[1])
    out = list(decode_tokens(model, ids, GenerationParams(max_new_tokens=24), tree=4, lookup=3))
    assert seen[len(ids[0]):] == out[:len(seen) - len(ids[0])]  # every emitted token, in order
