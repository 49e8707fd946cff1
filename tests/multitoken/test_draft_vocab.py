"""Draft vocabulary, token-conditioned heads and batched greedy targets."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mot.generation import GenerationParams
from mot.multitoken import Example, decode, load_multitoken, train_curriculum
from mot.multitoken.data import SequenceDataset
from mot.multitoken.stages import choose_draft_vocab, greedy_continuations

from .conftest import PROMPTS
from .test_decoding import _perturb_heads, _reference
from .test_training import _cfg


def test_draft_vocab_maps_tokens_to_rows_and_back(make_model):
    model = make_model("llama", num_heads=3, k_max=3, draft_vocab_size=5)
    heads = model.heads
    heads.set_draft_vocab(torch.tensor([7, 3, 11, 2, 40]))
    assert heads.token_ids(torch.tensor([0, 4, 2])).tolist() == [7, 40, 11]
    assert heads.vocab_rows(torch.tensor([3, 40, 8, -100])).tolist() == [1, 4, -100, -100]
    hidden = torch.randn(2, heads.hidden_size)
    full = heads.head_logits(hidden, 0)
    logits = heads.head_logits(hidden, 1, torch.tensor([5, 6]))  # zero-initialised: the LM head's rows
    assert logits.shape == (2, 5)
    assert torch.allclose(logits, full[:, [7, 3, 11, 2, 40]], atol=1e-6)


def test_choose_draft_vocab_takes_the_most_frequent_targets_and_keeps_eos(make_model):
    model = make_model("llama")
    examples = [Example("q", "return x + 1 " * 3, 1), Example("q", "return y", 2)]
    dataset = SequenceDataset(examples, model.tokenizer, 64, eos_id=1)
    ids = choose_draft_vocab(dataset, 3, always={1})
    counts: dict[int, int] = {}
    for item in dataset.items:
        for t in item["input_ids"][item["prompt_length"]:].tolist():
            counts[t] = counts.get(t, 0) + 1
    top = sorted((t for t in counts if t != 1), key=lambda t: (-counts[t], t))[:2]
    assert ids.tolist() == [1, *top]


def test_batched_greedy_continuations_equal_generate_per_prompt(make_model, tmp_path):
    model = make_model("llama")
    examples = [Example(p, "x = 1\n" * (2 + i % 3), i + 1) for i, p in enumerate(PROMPTS[:6])]
    dataset = SequenceDataset(examples, model.tokenizer, 64, eos_id=sorted(model.eos_token_ids)[0])
    cache = tmp_path / "greedy.safetensors"
    continuations = greedy_continuations(model, dataset, batch_size=4, cache_file=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["greedy.json", "greedy.safetensors"]  # no temporaries
    cached = greedy_continuations(model, dataset, batch_size=4, cache_file=cache)
    assert [c.tolist() for c in cached] == [c.tolist() for c in continuations]
    for item, continuation in zip(dataset.items, continuations, strict=True):
        budget = len(item["input_ids"]) - item["prompt_length"]
        prompt = model.tokenizer.decode(item["input_ids"][: item["prompt_length"]])
        reference = _reference(model, prompt, budget)
        eos = [j for j, t in enumerate(reference) if t in model.eos_token_ids]
        reference = reference[: eos[0] + 1] if eos else reference
        assert continuation.tolist() == reference


def test_decoding_with_draft_vocab_and_token_conditioning_is_exact(make_model):
    model = make_model("llama", num_heads=4, k_max=4, draft_vocab_size=40, token_conditioning=True)
    model.heads.set_draft_vocab(torch.randperm(model.heads.vocab_size)[:40])
    _perturb_heads(model)
    for prompt in PROMPTS[:6]:
        result = decode(model, prompt, GenerationParams(max_new_tokens=16))
        assert result.token_ids == _reference(model, prompt)


def test_trained_draft_vocab_is_saved_and_reloaded(make_model, load_tiny, tmp_path):
    model = make_model("llama", num_heads=3, k_max=3, draft_vocab_size=24)
    examples = [Example(f"q{i}: ", "return x + 1 " * 4, i + 1) for i in range(8)]
    out = train_curriculum(model, examples, tmp_path / "run", _cfg(stage1_epochs=1, stage2_epochs=1, self_distill="generate"))
    chosen = model.heads.vocab_ids.clone()
    assert not torch.equal(chosen, torch.arange(24))  # chosen from the targets, not the placeholder
    stored = load_file(str(tmp_path / "run" / "stage2" / "greedy_train.safetensors"))
    counts: dict[int, int] = {}
    for tokens in stored.values():
        for t in tokens.tolist():
            counts[t] = counts.get(t, 0) + 1
    assert max(counts, key=counts.get) in chosen.tolist()  # what verification accepts most often
    assert set(model.eos_token_ids) <= set(chosen.tolist())
    reloaded = load_multitoken(out["s2"], backbone=load_tiny("llama"))
    assert torch.equal(reloaded.heads.vocab_ids, chosen)
    for prompt in PROMPTS[:3]:
        assert decode(reloaded, prompt, GenerationParams(max_new_tokens=12)).token_ids == _reference(reloaded, prompt, 12)


def test_unverified_decoding_with_filler_rows_matches_no_fillers(make_model, monkeypatch):
    """A feed padded with filler rows (CPU speed) emits the same lossy tokens as an unpadded one."""
    for family in ("llama", "gemma3_text"):
        model = make_model(family, num_heads=3, k_max=3)
        _perturb_heads(model)
        monkeypatch.setattr(model.heads, "router_scores",
                            lambda hidden: torch.tensor([0.0, 2.0, 1.0]).expand(*hidden.shape[:-1], 3))
        from mot.multitoken.decoding import decode_tokens

        ids = model.encode(PROMPTS[2])
        params = GenerationParams(max_new_tokens=20)
        padded = list(decode_tokens(model, ids, params, verify=False, min_feed=4))
        plain = list(decode_tokens(model, ids, params, verify=False, min_feed=1))
        assert padded == plain and len(padded) == 20
        exact = list(decode_tokens(model, ids, params, min_feed=4))
        assert exact == _reference(model, PROMPTS[2], 20)
