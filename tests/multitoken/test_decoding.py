"""Oracle: verified multi-token decoding is the backbone's own greedy generate(), token for token."""

from __future__ import annotations

import pytest
import torch

from mot.generation import GenerationParams
from mot.multitoken import MultiTokenGenerator, decode

from .conftest import PROMPTS

MAX_NEW = 16


def _perturb_heads(model, scale: float = 0.05, seed: int = 1) -> None:
    """Non-trivial heads: random residual weights, so drafts are sometimes right and often wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.heads.heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _reference(model, prompt: str, max_new: int = MAX_NEW) -> list[int]:
    ids = model.encode(prompt)
    out = model.backbone.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=max_new, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_heads_at_init_are_exactly_the_backbone_next_token_predictor(make_model, family):
    model = make_model(family, num_heads=4, k_max=4)
    ids = model.encode(PROMPTS[1])
    reference = model.backbone(ids).logits[0]
    hidden, logits, _ = model.backbone_step(ids)
    assert torch.equal(logits[0], reference)
    read = torch.randint(0, model.heads.vocab_size, (reference.shape[0], 3))  # tokens t+1.. (chain-conditioned)
    for head in range(4):  # zero-initialised, the tokens the heads read change nothing
        assert torch.equal(model.heads.head_logits(hidden[0], head, read), reference), head


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma3_text"])  # gemma3: sliding window 16
def test_verified_greedy_decoding_equals_backbone_generate_on_many_prompts(make_model, family):
    model = make_model(family, num_heads=4, k_max=4)
    _perturb_heads(model)
    drafted = 0
    for prompt in PROMPTS[:8]:
        result = decode(model, prompt, GenerationParams(max_new_tokens=MAX_NEW))
        assert result.token_ids == _reference(model, prompt), prompt
        assert not result.lossy
        drafted += sum(result.stats.drafted.values())
    assert drafted > 0  # the heads really drafted and were checked


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_verified_decoding_stays_exact_when_most_drafts_are_accepted(make_model, family, monkeypatch):
    """Drafts that are the true continuation (with every 5th corrupted) exercise multi-token acceptance and
    cache cropping at every accepted length; the output must still be the backbone's."""
    model = make_model(family, num_heads=4, k_max=4)
    state = {"future": [], "pos": 0, "calls": 0}
    heads = model.heads

    def oracle_drafts(hidden, chain, next_token=None, pick=None, **_):
        state["calls"] += 1
        start = state["pos"]
        tokens = state["future"][start + 1:start + 1 + len(chain)]
        tokens = tokens + [1] * (len(chain) - len(tokens))
        if state["calls"] % 5 == 0 and tokens:
            tokens[-1] = (tokens[-1] + 1) % heads.vocab_size
        return tokens

    monkeypatch.setattr(heads, "draft_tokens", oracle_drafts)
    for prompt in PROMPTS[:4]:
        reference = _reference(model, prompt, 32)
        state.update(future=reference, pos=0)
        from mot.multitoken.decoding import DecodeStats, decode_tokens

        stats = DecodeStats()
        out = []
        for token in decode_tokens(model, model.encode(prompt), GenerationParams(max_new_tokens=32), stats=stats):
            out.append(token)
            state["pos"] = len(out) - 1  # drafts continue after the last emitted token
        assert out == reference, prompt
        if len(reference) >= 20:
            assert stats.tokens_per_pass > 2.0


def test_k_max_below_heads_limits_the_drafts_and_stays_exact(make_model):
    model = make_model("llama", num_heads=5, k_max=2)
    _perturb_heads(model, scale=0.0)  # heads = next-token predictor: accepted whenever the text repeats
    for prompt in PROMPTS[:3]:
        result = decode(model, prompt, GenerationParams(max_new_tokens=MAX_NEW))
        assert result.token_ids == _reference(model, prompt)
        assert set(result.stats.drafted) <= {1}  # k_max 2 = head 0 (the backbone) + one drafting head
    one = make_model("llama", num_heads=5, k_max=1)
    result = decode(one, PROMPTS[0], GenerationParams(max_new_tokens=MAX_NEW))
    assert result.stats.drafted == {} and result.stats.backbone_passes == len(result.token_ids)
    assert decode(one, PROMPTS[0], GenerationParams(max_new_tokens=MAX_NEW), k=1).token_ids == _reference(one, PROMPTS[0])


def test_unverified_decoding_is_labelled_lossy_and_emits_several_tokens_per_pass(make_model, monkeypatch):
    model = make_model("llama", num_heads=4, k_max=3)
    # a router that ranks heads 1, 2, 3 in that order: heads 1 and 2 draft at every step
    monkeypatch.setattr(model.heads, "router_scores",
                        lambda hidden: torch.tensor([0.0, 3.0, 2.0, 1.0]).expand(*hidden.shape[:-1], 4))
    result = decode(model, PROMPTS[0], GenerationParams(max_new_tokens=30), verify=False)
    assert result.lossy and result.stats.lossy
    assert result.stats.tokens_per_pass >= 2.4  # 1 backbone token + 2 drafts per pass, whatever they are
    generator = MultiTokenGenerator(model, verify=False)
    assert "lossy" in generator.name
    assert "lossy" not in MultiTokenGenerator(model).name


def test_stream_yields_pieces_that_join_to_the_generated_text_and_honour_stop(make_model):
    model = make_model("gpt2", num_heads=3, k_max=3)
    generator = MultiTokenGenerator(model)
    from mot.generation import TextGenerator

    assert isinstance(generator, TextGenerator)
    params = GenerationParams(max_new_tokens=20)
    pieces = list(generator.stream(PROMPTS[0], params))
    text = "".join(pieces)
    assert text == model.tokenizer.decode(_reference(model, PROMPTS[0], 20), skip_special_tokens=True)
    assert generator.generate([PROMPTS[0]], params) == [text]
    if len(text) > 4:
        stop = text[2:4]
        stopped = "".join(generator.stream(PROMPTS[0], GenerationParams(max_new_tokens=20, stop=[stop])))
        assert stopped == text[: text.find(stop)]


def test_speculative_sampling_keeps_the_backbone_distribution(make_model):
    """A point-mass draft kept with probability p(d), else a sample from p without d: the emitted token is
    distributed exactly as p (checked empirically on a fixed distribution), and decoding is seeded."""
    from mot.multitoken.decoding import _Picker, _verify

    model = make_model("llama", num_heads=3, k_max=3)
    params = GenerationParams(max_new_tokens=6, temperature=1.5, top_k=5, seed=3)
    assert decode(model, PROMPTS[3], params).token_ids == decode(model, PROMPTS[3], params).token_ids

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0], [0.0] * 6])
    picker = _Picker(GenerationParams(temperature=1.0, top_k=4, seed=0), torch.device("cpu"))
    exact = picker.probs(logits[0])
    counts = torch.zeros(6)
    n = 4000
    for _ in range(n):
        accepted, correction = _verify([1], logits, picker)
        counts[1 if accepted else correction] += 1
    assert counts[4:].sum() == 0  # top-k removed tokens never appear
    assert 0.5 * (counts / n - exact).abs().sum().item() < 0.03


@pytest.mark.parametrize("skinny_rows", [False, True])
def test_verified_decoding_is_exact_on_either_linear_path(make_model, skinny_rows):
    """Verification passes on PyTorch's own linear path (with CPU filler rows) and on mot.experts.skinny's."""
    from mot.multitoken.decoding import DecodeStats, decode_tokens

    model = make_model("qwen2", num_heads=4, k_max=4)
    _perturb_heads(model)
    for prompt in PROMPTS[:3]:
        stats = DecodeStats()
        tokens = list(decode_tokens(model, model.encode(prompt), GenerationParams(max_new_tokens=MAX_NEW),
                                    stats=stats, skinny_rows=skinny_rows))
        assert tokens == _reference(model, prompt), prompt
        assert stats.drafted
