"""Greedy-chain targets read off one teacher-forced pass, and chain-conditioned (Hydra-style) heads."""

from __future__ import annotations

import pytest
import torch

from mot.generation import GenerationParams
from mot.multitoken import Example, MultiTokenConfig, decode, load_multitoken, train_curriculum
from mot.multitoken.data import chain_targets, step_targets

from .conftest import PROMPTS
from .test_decoding import _perturb_heads, _reference
from .test_training import QUESTIONS, _cfg, _tokens_per_pass


def _greedy(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    out = model.backbone.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                  pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_chain_targets_are_the_backbone_greedy_continuation_wherever_set(make_model):
    """Oracle: every set target equals generate() from that step's prefix; on the backbone's own greedy
    text every target is set, on text that leaves it the chain stops where the text does."""
    model = make_model("llama")
    heads = 4
    prompt = model.encode(PROMPTS[0])[0].tolist()
    greedy = _greedy(model, prompt, 14)
    corrupted = greedy[:6] + [(greedy[6] + 1) % model.heads.vocab_size] + greedy[7:]
    for text, complete in ((greedy, True), (corrupted, False)):
        ids = torch.tensor([prompt + text])
        response = torch.zeros_like(ids, dtype=torch.bool)
        response[0, len(prompt):] = True
        guesses = model.backbone(ids).logits.argmax(-1)
        step_mask, labels = chain_targets(ids, guesses, response, heads)
        assert torch.equal(step_mask, step_targets(ids, response, heads)[0])
        checked = unset = 0
        for t in step_mask[0].nonzero()[:, 0].tolist():
            reference = _greedy(model, ids[0, : t + 1].tolist(), heads)
            for h in range(heads):
                label = int(labels[0, t, h])
                if label >= 0:
                    assert label == reference[h], (t, h)
                    checked += 1
                elif t + h < ids.shape[1] - 1:  # inside the sequence: unset only where the text left the chain
                    unset += 1
                    assert any(int(guesses[0, s]) != int(ids[0, s + 1]) for s in range(t, t + h)), (t, h)
        assert checked > 20
        assert (unset == 0) == complete


def test_chain_targets_stop_at_eos():
    ids = torch.tensor([[5, 6, 7, 2, 9]])
    response = torch.tensor([[False, True, True, True, True]])
    guesses = torch.tensor([[6, 7, 2, 9, 3]])  # every guess matches; 2 is EOS
    _, labels = chain_targets(ids, guesses, response, 4, eos={2})
    assert labels[0, 0].tolist() == [6, 7, 2, -100]  # nothing is drafted past EOS
    assert labels[0, 1].tolist() == [7, 2, -100, -100]


def test_chain_conditioning_needs_token_conditioning_and_old_checkpoints_load_without_it():
    assert MultiTokenConfig().chain_conditioning is True
    assert MultiTokenConfig(token_conditioning=False).chain_conditioning is False  # plain Medusa heads
    old = MultiTokenConfig().to_dict()
    del old["chain_conditioning"]
    assert MultiTokenConfig.from_dict(old).chain_conditioning is False


def test_chain_conditioned_heads_read_the_drafts_before_them(make_model):
    model = make_model("llama", num_heads=4, k_max=4, chain_conditioning=True, draft_vocab_size=50)
    heads = model.heads
    assert [heads.tokens_read(h) for h in (1, 2, 3)] == [1, 2, 3]
    hidden = torch.randn(heads.hidden_size)
    next_token = 9
    # zero-initialised: every head is still the backbone's LM head (over the draft vocabulary)
    full = heads.head_logits(hidden, 0)
    assert torch.allclose(heads.head_logits(hidden, 3, torch.tensor([1, 2, 3])), full[heads.vocab_ids], atol=1e-6)
    _perturb_heads(model, scale=0.2)
    drafts = heads.draft_tokens(hidden, [1, 2, 3], next_token)
    read = [next_token]
    for head in (1, 2, 3):  # one after another, each reading the tokens drafted before it
        read.append(int(heads.token_ids(heads.head_logits(hidden, head, torch.tensor(read)).argmax(-1))))
    assert drafts == read[1:]
    other = heads.head_logits(hidden, 3, torch.tensor([read[0], read[1], (read[2] + 1) % 50]))
    assert not torch.allclose(other, heads.head_logits(hidden, 3, torch.tensor(read[:3])))
    with pytest.raises(ValueError, match="draft_tokens"):
        heads.draft_logits(hidden, [1, 2], next_token)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_decoding_with_chain_conditioned_heads_is_exact(make_model, family):
    model = make_model(family, num_heads=4, k_max=4, chain_conditioning=True)
    _perturb_heads(model)
    for prompt in PROMPTS[:6]:
        assert decode(model, prompt, GenerationParams(max_new_tokens=16)).token_ids == _reference(model, prompt)
    sampled = decode(model, PROMPTS[0], GenerationParams(max_new_tokens=12, temperature=0.8, seed=3))
    assert len(sampled.token_ids) == 12


def test_chain_self_distillation_learns_from_text_without_generating(make_model, tmp_path, monkeypatch):
    """self_distill="chain" trains on the data's own forward pass: on text that is the
    backbone's greedy output every target is set and accepted tokens per pass rise; nothing is generated."""
    import mot.multitoken.curriculum as curriculum
    from mot.multitoken.data import SequenceDataset

    model = make_model("llama", num_heads=3, k_max=3, chain_conditioning=True, untie_heads=True)
    before = _tokens_per_pass(model, QUESTIONS)

    class GreedyText(SequenceDataset):
        """Responses replaced by the backbone's greedy tokens (the tiny tokenizer does not round-trip text)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for item in self.items:
                prompt = item["input_ids"][: item["prompt_length"]].tolist()
                item["input_ids"] = torch.tensor(prompt + _greedy(model, prompt, 20))

    monkeypatch.setattr(curriculum, "SequenceDataset", GreedyText)
    examples = [Example(q, "x", i + 1) for i, q in enumerate(QUESTIONS)]
    out = train_curriculum(model, examples, tmp_path / "run", _cfg(stage1_epochs=0, stage2_epochs=60,
                                                                    learning_rate=1e-2, self_distill="chain"))
    assert not list((tmp_path / "run").rglob("greedy_*.safetensors"))
    trained = load_multitoken(out["s2"], backbone=(model.backbone, model.tokenizer))
    assert trained.config.chain_conditioning
    after = _tokens_per_pass(trained, QUESTIONS)
    assert after > before + 0.4, (before, after)
    for q in QUESTIONS:
        assert decode(trained, q, GenerationParams(max_new_tokens=24)).token_ids == _reference(trained, q, 24)
