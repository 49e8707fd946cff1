"""Branch states in batches of forked caches equal the one-tail-at-a-time walk (and HF's own forward).

``MixtureOfThoughts._branch_states`` runs the text once, then every branch tail ``(k, tail)`` in batches of
copies of that cache, each row masking out the cached tokens from its own ``k`` on.  The oracle is the walk
(``_branch_states_walk``: feed each tail after its prefix, crop it away) and HF's forward of
``full_ids[:k] + tail`` with no cache at all.
"""

from __future__ import annotations

import random

import pytest
import torch

from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig
from mot.thoughts import model as model_module


def _mot(load_tiny, peer: str) -> MixtureOfThoughts:
    models = [load_tiny("llama"), load_tiny(peer)]
    torch.manual_seed(0)
    config = MoTConfig(num_stacks=2, top_k=2, interaction_heads=4, dropout=0.0, router_hidden_dim=16)
    return MixtureOfThoughts([m for m, _ in models], [t for _, t in models], config,
                             expert_specs=["llama", peer], encoder=HashingEncoder(32)).eval()


def _text_and_branches(mot: MixtureOfThoughts, length: int, count: int, seed: int = 0):
    rng = random.Random(seed)
    vocab = mot.experts[1].config.vocab_size
    ids = [rng.randrange(3, vocab) for _ in range(length)]
    branches = {(rng.randrange(0, length + 1), tuple(rng.randrange(3, vocab) for _ in range(rng.randrange(1, 4))))
                for _ in range(count)}
    branches.add((0, (ids[0],)))  # a tail read from the very start
    return ids, sorted(branches)


def _hf_states(mot: MixtureOfThoughts, ids: list[int], branches) -> dict:
    """Each tail's per-stack states from HF's own forward of ``ids[:k] + tail`` (hooks on the stacks' last layers)."""
    model, layers = mot.experts[1], mot.adapters[1].layers
    stops = [stop - 1 for _, stop in mot.stacks[1]]
    out = {}
    for k, tail in branches:
        captured: dict[int, torch.Tensor] = {}
        hooks = [layers[i].register_forward_hook(
            lambda _m, _a, o, i=i, c=captured: c.__setitem__(i, o[0] if isinstance(o, tuple) else o)) for i in stops]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([ids[:k] + list(tail)]))
        finally:
            for hook in hooks:
                hook.remove()
        out[(k, tail)] = [captured[i][0, k:] for i in stops]
    return out


def _assert_same(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert len(got[key]) == len(want[key])
        for a, b in zip(got[key], want[key], strict=True):
            assert a.shape == b.shape == (len(key[1]), a.shape[-1])
            torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("peer", ["gpt2", "qwen2", "gemma3_text"])
def test_batched_branch_states_equal_the_walk_and_hf(load_tiny, peer, monkeypatch):
    mot = _mot(load_tiny, peer)
    # gemma3's tiny window is 16: a text that fits it takes the batched path, as the other families do
    ids, branches = _text_and_branches(mot, length=11 if peer == "gemma3_text" else 40, count=14)
    walk = mot._branch_states_walk(1, ids, branches, "cpu")
    monkeypatch.setattr(type(mot), "_branch_states_walk",
                        lambda *a: pytest.fail("the batched path fell back to the walk"))
    monkeypatch.setattr(model_module, "_FORK_BYTES", 1)  # one row per batch ...
    single = mot._branch_states(1, ids, branches, "cpu")
    monkeypatch.setattr(model_module, "_FORK_BYTES", 2**30)  # ... and every row in one batch
    batched = mot._branch_states(1, ids, branches, "cpu")
    _assert_same(single, walk, 1e-5)
    _assert_same(batched, walk, 1e-5)
    _assert_same(batched, _hf_states(mot, ids, branches), 1e-5)


def test_a_text_longer_than_the_sliding_window_takes_the_walk(load_tiny, monkeypatch):
    mot = _mot(load_tiny, "gemma3_text")
    assert mot.adapters[1].attention_window == 16
    ids, branches = _text_and_branches(mot, length=30, count=10, seed=1)
    calls = []
    walk = type(mot)._branch_states_walk
    monkeypatch.setattr(type(mot), "_branch_states_walk", lambda self, *a: calls.append(1) or walk(self, *a))
    got = mot._branch_states(1, ids, branches, "cpu")
    assert calls == [1]
    _assert_same(got, _hf_states(mot, ids, branches), 1e-5)


def test_fork_copies_the_cache_and_leaves_the_state_alone(load_tiny):
    mot = _mot(load_tiny, "qwen2")
    adapter = mot.adapters[1]
    state = adapter.new_state()
    hidden = adapter.embed(torch.tensor([[5, 6, 7, 8]]), None, state)
    adapter.run_layers(hidden, 0, adapter.num_layers, state)
    fork = adapter.fork(state, 3)
    assert fork.attention_mask.shape == (3, 4) and state.attention_mask.shape == (1, 4)
    keys = fork.cache.layers[0].keys
    assert keys.shape[0] == 3 and state.cache.layers[0].keys.shape[0] == 1
    torch.testing.assert_close(keys[2], state.cache.layers[0].keys[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="one-row state"):
        adapter.fork(fork, 2)


@pytest.mark.real
@pytest.mark.slow
def test_real_gemma_peer_batched_branch_states_equal_the_walk():
    """Gemma-3-270m reads a branch at nearly every word (``'▁'`` tails): the case the batching is for.  Its
    residual stream reaches ~4e4, so fp32 noise is relative: batched and walk both sit within 2e-6 of the
    largest state from each other and from HF's forward (measured: 1.4e-6 and 4e-7)."""
    from mot.experts import assets
    from mot.experts.resolve import resolve_expert

    names = ("smollm2-135m", "gemma-3-270m")
    for name in names:
        missing = assets.missing_packages(assets.get_asset(name))
        if missing:
            pytest.skip(f"{name} needs `mot download {name}` (missing {' '.join(missing)})")
    experts = [resolve_expert(name) for name in names]
    mot = MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts],
                            MoTConfig(num_stacks=2, top_k=2, interaction_heads=8, dropout=0.0),
                            expert_specs=list(names), encoder=HashingEncoder(32)).eval()
    tokenizer = mot.adapters[1].tokenizer
    text = ("Question: Which gas makes up most of the Earth's atmosphere? A. oxygen B. nitrogen "
            "C. carbon dioxide D. argon\nAnswer: B")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    branches = sorted({(k, (ids[k], tokenizer.convert_tokens_to_ids("▁"))) for k in range(0, len(ids), 3)})
    batched = mot._branch_states(1, ids, branches, "cpu")
    walk = mot._branch_states_walk(1, ids, branches, "cpu")
    hf = _hf_states(mot, ids, branches)
    scale = max(float(s.abs().max()) for states in hf.values() for s in states)
    assert scale > 1e3  # Gemma's large activations: why the tolerance is relative
    _assert_same(batched, walk, 2e-6 * scale)
    _assert_same(batched, hf, 2e-6 * scale)
