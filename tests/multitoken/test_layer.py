"""Draft-layer heads (EAGLE-style, ``head_type="layer"``): the incremental drafting path equals the unrolled
training path, verified decoding with them is still exactly ``generate()``, and they train and reload."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot.errors import UsageError
from mot.generation import GenerationParams
from mot.multitoken import MultiTokenConfig, decode
from mot.multitoken.drafter import DraftCache, DraftLayer

from .conftest import PROMPTS
from .test_decoding import _reference


def _layer(seed: int = 0) -> DraftLayer:
    torch.manual_seed(seed)
    layer = DraftLayer(32, 16, num_heads=4, ffn_size=48)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer.eval()


@torch.no_grad()
def test_incremental_steps_equal_the_unrolled_training_pass():
    layer = _layer()
    T, S = 9, 3
    features, embeddings = torch.randn(1, T, 32), torch.randn(1, T, S, 16)
    unrolled = layer.unrolled(features, embeddings, S)
    # positions arrive in uneven chunks, as verification passes settle them
    cache, outputs, start = DraftCache(), {}, 0
    for size in (4, 1, 3, 1):
        out = layer.extend(cache, features[0, start:start + size], embeddings[0, start:start + size, 0])
        start += size
        outputs[start - 1] = out
        # from the last settled position p, steps 2..S read their own outputs (as drafting does)
        drafted, previous = [], out
        for step in range(1, S):
            previous = layer.step(cache, previous, embeddings[0, start - 1, step], drafted)
            torch.testing.assert_close(previous, unrolled[step][0, start - 1], rtol=1e-5, atol=1e-5)
        assert len(cache) == start
    for p, out in outputs.items():
        torch.testing.assert_close(out, unrolled[0][0, p], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_batched_step_equals_one_step_per_path():
    layer = _layer(2)
    cache = DraftCache()
    out = layer.extend(cache, torch.randn(5, 32), torch.randn(5, 16))
    embeddings = torch.randn(2, 2, 16)  # two paths, two steps each
    singles = []
    for path in range(2):
        drafted, previous = [], out
        for step in range(2):
            previous = layer.step(cache, previous, embeddings[path, step], drafted)
        singles.append(previous)
    drafted, previous = [], out.expand(2, -1)
    for step in range(2):
        previous = layer.step(cache, previous, embeddings[:, step], drafted)
    torch.testing.assert_close(previous, torch.stack(singles), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_padding_does_not_change_the_unrolled_outputs():
    layer = _layer(1)
    features, embeddings = torch.randn(2, 7, 32), torch.randn(2, 7, 2, 16)
    features[1, 5:], embeddings[1, 5:] = 0.0, 0.0
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    padded = layer.unrolled(features, embeddings, 2, attention_mask=mask)
    alone = layer.unrolled(features[1:, :5], embeddings[1:, :5], 2)
    for step in range(2):
        torch.testing.assert_close(padded[step][1, :5], alone[step][0], rtol=1e-5, atol=1e-5)


def _perturb_layer(model, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.heads.layer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma3_text"])
def test_layer_heads_decode_exactly_like_generate(make_model, family):
    model = make_model(family, num_heads=4, k_max=4, head_type="layer")
    _perturb_layer(model)
    drafted = 0
    for prompt in PROMPTS[:6]:
        result = decode(model, prompt, GenerationParams(max_new_tokens=16))
        assert result.token_ids == _reference(model, prompt, 16), prompt
        drafted += sum(result.stats.drafted.values())
    assert drafted > 0
    lossy = decode(model, PROMPTS[0], GenerationParams(max_new_tokens=12), verify=False)
    assert lossy.lossy and len(lossy.token_ids) == 12
    # speculative sampling drafts from the layer too: seeded, so repeatable
    sampled = GenerationParams(max_new_tokens=10, temperature=1.2, top_k=8, seed=5)
    first = decode(model, PROMPTS[1], sampled)
    assert first.token_ids == decode(model, PROMPTS[1], sampled).token_ids and first.stats.drafted


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_layer_heads_with_lookup_and_trees_stay_exact(make_model, family):
    model = make_model(family, num_heads=4, k_max=4, head_type="layer")
    _perturb_layer(model)
    for prompt in PROMPTS[:5]:
        for kwargs in ({"lookup": 4}, {"tree": 5}, {"tree": 8, "lookup": 3}):
            result = decode(model, prompt, GenerationParams(max_new_tokens=16), **kwargs)
            assert result.token_ids == _reference(model, prompt, 16), (prompt, kwargs)


def _observed(make_model, prompt: str):
    """A perturbed draft-layer model that has observed ``prompt``: ``(model, ids, hidden, next token, state)``."""
    model = make_model("llama", num_heads=4, k_max=4, head_type="layer")
    _perturb_layer(model, scale=0.2)
    ids = model.encode(prompt)
    hidden, logits, _ = model.backbone_step(ids)
    next_token = int(logits[0, -1].argmax())
    state = model.heads.new_draft_state()
    model.heads.observe(state, hidden[0], [*ids[0, 1:].tolist(), next_token])
    return model, ids, hidden, next_token, state


def test_layer_tree_leads_with_the_chain(make_model):
    model, ids, hidden, next_token, state = _observed(make_model, PROMPTS[1])
    heads = model.heads
    nodes = heads.draft_tree(hidden[0, -1], [1, 2, 3], next_token, width=3, budget=7, state=state)
    assert 3 <= len(nodes) <= 7 and [parent for parent, _ in nodes[:3]] == [0, 1, 2]
    assert [token for _, token in nodes[:3]] == heads.draft_tokens(hidden[0, -1], [1, 2, 3], next_token, state=state)
    assert len(state.cache) == ids.shape[1]  # drafting never writes to the cache of verified positions
    with pytest.raises(ValueError, match="DraftState"):
        heads.draft_tree(hidden[0, -1], [1, 2], next_token, width=2, budget=3)


def test_layer_drafts_read_the_whole_sequence(make_model):
    """The same last state after different prefixes gives different drafts only through the layer's context:
    the drafted chain equals an argmax over the unrolled pass over the sequence."""
    model, ids, hidden, next_token, state = _observed(make_model, PROMPTS[2])
    heads = model.heads
    drafts = heads.draft_tokens(hidden[0, -1], [1, 2, 3], next_token, state=state)
    # the unrolled pass, reading the drafts as the later steps' tokens
    tokens = torch.tensor([[*ids[0, 1:].tolist(), next_token]])
    steps = torch.zeros(1, ids.shape[1], 3, dtype=torch.long)
    steps[0, :, 0] = tokens[0]
    steps[0, -1, 1:] = torch.tensor(drafts[:2])
    outputs = heads.layer.unrolled(hidden, F.embedding(steps, heads.embed_weight), 3)
    expected = [int(heads.token_ids(heads._project(out[0, -1], *heads._output(1)).argmax())) for out in outputs]
    assert drafts == expected


def test_layer_config_is_checked(make_model, tmp_path):
    from mot.multitoken import CurriculumConfig, Example, train_curriculum

    model = make_model("llama", num_heads=3, k_max=2, head_type="layer")
    with pytest.raises(UsageError, match="PPO trains residual heads only"):
        train_curriculum(model, [Example("q", "a b", 1)], tmp_path / "run",
                         CurriculumConfig(ppo_steps=2, progress=False, device="cpu"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="head_type"):
        MultiTokenConfig(head_type="tower")
    with pytest.raises(UsageError, match="token_conditioning"):
        MultiTokenConfig(head_type="layer", token_conditioning=False)
    with pytest.raises(UsageError, match="untie-heads"):
        MultiTokenConfig(head_type="layer", untie_heads=True)


def test_layer_heads_learn_the_greedy_chain_and_reload(make_model, tmp_path):
    """Stages 1-2 train the draft layer (the router too); tokens per pass rise, the s2 checkpoint rebuilds
    the same layer from its config alone, and decoding stays exact.  (Unlike residual heads, the layer does
    not start as the backbone's next-token predictor, and a random tiny backbone's greedy text is hard to
    learn: it needs more steps than the residual heads' test.)"""
    from mot.multitoken import CurriculumConfig, Example, load_multitoken, train_curriculum

    from .test_training import QUESTIONS, _tokens_per_pass

    model = make_model("llama", num_heads=3, k_max=3, head_type="layer")
    before = _tokens_per_pass(model, QUESTIONS)
    examples = [Example(q, "return x + 1 " * 5, i + 1) for i, q in enumerate(QUESTIONS)]
    cfg = CurriculumConfig(batch_size=4, learning_rate=1e-2, max_length=32, progress=False, device="cpu",
                           stage1_epochs=1, stage2_epochs=150, self_distill="generate")
    out = train_curriculum(model, examples, tmp_path / "run", cfg)
    trained = load_multitoken(out["s2"], backbone=(model.backbone, model.tokenizer))
    assert trained.config.head_type == "layer" and trained.config.layer_heads == model.config.layer_heads
    for name, value in model.heads.state_dict().items():
        assert torch.equal(trained.heads.state_dict()[name], value), name
    after = _tokens_per_pass(trained, QUESTIONS)
    assert after > before + 0.4, (before, after)
    for q in QUESTIONS:
        assert decode(trained, q, GenerationParams(max_new_tokens=24)).token_ids == _reference(trained, q, 24)
