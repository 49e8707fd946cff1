"""Generation: full mode with KV caches == recompute from scratch; fast mode == the primary's generate()."""

from __future__ import annotations

import pytest
import torch

from mot.generation import GenerationParams, TextGenerator
from mot.thoughts import FullDecoder, FullDecodeStats, recompute_next_logits
from mot.thoughts.generation import StopCutter, sample_token, template_stops

from .helpers import fixed_routing

PROMPT = "def add(a, b):"


def _force(mot, monkeypatch, rows):
    decision = fixed_routing(rows)
    monkeypatch.setattr(mot, "route", lambda prompts, features=None: fixed_routing(rows[:1] * len(prompts))
                        if len(prompts) != len(rows) else decision)


@pytest.mark.parametrize("visibility", ["stable", "span"])
def test_full_mode_with_caches_equals_recompute_from_scratch_greedy(make_mot, visibility):
    mot = make_mot(randomise=True, peer_visibility=visibility)
    experts, weights = [1, 0, 2], torch.tensor([0.5, 0.3, 0.2])
    decoder = FullDecoder(mot, PROMPT, experts, weights)
    logits = decoder.prefill()
    scratch_tokens: list[int] = []
    for _ in range(12):
        reference = recompute_next_logits(mot, PROMPT, scratch_tokens, experts, weights)
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
        token = int(torch.argmax(reference))
        assert int(torch.argmax(logits)) == token
        scratch_tokens.append(token)
        decoder.accept(token)
        logits = decoder.advance()
    assert decoder.generated == scratch_tokens


@pytest.mark.parametrize("visibility", ["stable", "span"])
def test_peer_retokenisation_rolls_back_and_still_equals_recompute(make_mot, visibility):
    """Feed the primary one character at a time: the peers' BPE merges change as words grow, so under
    'span' their caches (and the primary tokens that saw the old tokens) are rolled back and re-fed."""
    mot = make_mot(randomise=True, peer_visibility=visibility)
    experts, weights = [0, 1, 2], torch.tensor([0.4, 0.35, 0.25])
    tokenizer = mot.adapters[0].tokenizer
    text = "\n    return total_value + other\n"
    forced = [tokenizer(ch, add_special_tokens=False)["input_ids"] for ch in text]
    assert all(len(ids) == 1 for ids in forced)
    decoder = FullDecoder(mot, PROMPT, experts, weights)
    logits = decoder.prefill()
    for n, (token,) in enumerate(forced, start=1):
        decoder.accept(token)
        logits = decoder.advance()
        reference = recompute_next_logits(mot, PROMPT, [t for (t,) in forced[:n]], experts, weights)
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert decoder.text == text
    if visibility == "span":
        assert decoder.stats.peer_rollbacks > 0 and decoder.stats.primary_refeeds > 0
    else:  # only final peer tokens are ever fed: nothing to roll back
        assert decoder.stats.peer_rollbacks == 0 and decoder.stats.primary_refeeds == 0


def test_generate_full_matches_the_decoder_and_streams_the_same_text(make_mot, monkeypatch):
    mot = make_mot(randomise=True)
    _force(mot, monkeypatch, [[2, 1, 0]])
    params = GenerationParams(max_new_tokens=10)
    stats = FullDecodeStats()
    text = mot.generate([PROMPT], params, mode="full", stats=stats)[0]
    assert "".join(mot.stream(PROMPT, params, mode="full")) == text
    decoder = FullDecoder(mot, PROMPT, [2, 1, 0], fixed_routing([[2, 1, 0]]).weights[0])
    logits = decoder.prefill()
    for _ in range(10):
        decoder.accept(int(torch.argmax(logits)))
        logits = decoder.advance()
    assert text == mot.adapters[2].tokenizer.decode(decoder.generated, skip_special_tokens=True)
    assert stats.tail_retokenisations > 0


def test_fast_mode_is_the_primary_experts_own_greedy_generate(make_mot, trio, monkeypatch):
    mot = make_mot(randomise=True)
    prompts = [PROMPT, "import os\n"]
    rows = [[1, 0, 2], [2, 0, 1]]
    _force(mot, monkeypatch, rows)
    params = GenerationParams(max_new_tokens=12)
    texts = mot.generate(prompts, params, mode="fast")
    for prompt, row, text in zip(prompts, rows, texts, strict=True):
        model, tok = trio[row[0]]
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(mot.stream(prompts[0], params, mode="fast")) == texts[0]


def test_full_mode_with_zero_gates_generates_what_the_primary_generates(make_mot, trio, monkeypatch):
    mot = make_mot(randomise=True, gate=0.0)
    _force(mot, monkeypatch, [[1, 0, 2]])
    params = GenerationParams(max_new_tokens=8)
    assert mot.generate([PROMPT], params, mode="full") == mot.generate([PROMPT], params, mode="fast")


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k(make_mot, monkeypatch):
    mot = make_mot(randomise=True)
    _force(mot, monkeypatch, [[0, 1, 2]])
    params = GenerationParams(max_new_tokens=8, temperature=0.9, top_k=5, top_p=0.9, seed=7)
    for mode in ("fast", "full"):
        assert mot.generate([PROMPT], params, mode=mode) == mot.generate([PROMPT], params, mode=mode)
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    picks = {sample_token(logits, GenerationParams(temperature=1.0, top_k=2), generator) for _ in range(50)}
    assert picks <= {1, 2}
    assert sample_token(logits, GenerationParams(temperature=1.0, top_p=0.5), generator) == 1


def test_stop_strings_cut_the_output_and_are_never_streamed():
    cutter = StopCutter(["###"])
    pieces = [cutter.feed(t) for t in ("ab", "ab#", "ab##", "ab##c", "ab##c###x")]
    assert "".join(pieces) == "ab##c"
    assert cutter.stopped
    assert template_stops("### Translate C++ to CUDA:\n{source}\n### CUDA:\n") == ["###"]


def test_translate_and_routing_info_are_deterministic(make_mot):
    mot = make_mot(randomise=True)
    mot.train()  # routing info must not depend on the training flag (no noise, no dropout)
    info = mot.get_routing_info("void add(int* a) {}")
    assert info == mot.get_routing_info("void add(int* a) {}")
    assert info["primary_expert"] == info["active_experts"][0]
    assert set(info["all_expert_probs"]) == {"gpt2", "llama", "qwen2"}
    assert abs(sum(info["expert_weights"].values()) - 1.0) < 1e-5
    assert mot.training
    text, primary = mot.translate("int x = 1;", max_new_tokens=6, mode="full")
    assert primary == mot.get_routing_info("### Translate C++ to CUDA:\nint x = 1;\n### CUDA:\n")["primary_expert"]
    assert "###" not in text


def test_text_generator_protocol(make_mot):
    generator = make_mot().as_text_generator(mode="fast")
    assert isinstance(generator, TextGenerator)
    params = GenerationParams(max_new_tokens=4)
    [reply] = generator.generate([[{"role": "user", "content": "hi"}]], params)
    assert isinstance(reply, str)


def test_text_generator_server_extensions(make_mot, trio, monkeypatch):
    """routing_info is get_routing_info of the formatted prompt; count_tokens counts the primary's prompt
    tokens as generation encodes them; context_length is the smallest expert limit."""
    from mot.thoughts.alignment import encode_pair
    from mot.thoughts.generation import Piece, expert_context_length

    mot = make_mot(randomise=True)
    messages = [{"role": "user", "content": "add two numbers"}]
    for mode in ("fast", "full"):
        generator = mot.as_text_generator(mode=mode)
        for prompt in (PROMPT, messages):
            text = generator.prompt_text(prompt)
            assert generator.routing_info(prompt) == mot.get_routing_info(text)
            primary = mot.expert_specs.index(mot.get_routing_info(text)["primary_expert"])
            tokenizer = trio[primary][1]
            assert generator.count_tokens(prompt) == len(tokenizer(text)["input_ids"]) == len(encode_pair(tokenizer, text))
        limits = [expert_context_length(m) for m, _ in trio]
        assert generator.context_length == min(limits) and all(isinstance(n, int) for n in limits)
    _force(mot, monkeypatch, [[1, 0, 2]])  # a fixed primary whose tokenizer differs from the others
    assert mot.as_text_generator().count_tokens(PROMPT) == len(trio[1][1](PROMPT)["input_ids"])

    # pieces carry exact token counts: every accepted primary token is reported once (EOS excluded)
    accepted = []
    original_accept = FullDecoder.accept
    monkeypatch.setattr(FullDecoder, "accept", lambda self, token: (accepted.append(token), original_accept(self, token)))
    params = GenerationParams(max_new_tokens=9)
    pieces = list(mot.as_text_generator(mode="full").stream(PROMPT, params))
    assert all(isinstance(p, Piece) for p in pieces) and sum(p.tokens for p in pieces) == len(accepted) > 0
    assert "".join(pieces) == mot.generate([PROMPT], params, mode="full")[0]
    model, tokenizer = trio[1]
    pieces = list(mot.as_text_generator(mode="fast").stream(PROMPT, params))
    ids = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=9, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    generated = [t for t in out[0, ids["input_ids"].shape[1]:].tolist() if t != tokenizer.eos_token_id]
    assert all(isinstance(p, Piece) for p in pieces) and sum(p.tokens for p in pieces) == len(generated)
    assert "".join(pieces) == mot.generate([PROMPT], params, mode="fast")[0]


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_closing_the_stream_stops_decoding(make_mot, trio, monkeypatch, mode):
    import time

    mot = make_mot(randomise=True)
    _force(mot, monkeypatch, [[1, 0, 2]])
    steps = []

    def slow_step(*args, **kwargs):  # one decoding step of the primary (slowed so the test sees a backlog)
        steps.append(1)
        time.sleep(0.005)

    handle = trio[1][0].get_output_embeddings().register_forward_pre_hook(slow_step)  # once per step, both modes
    try:
        params = GenerationParams(max_new_tokens=60)
        assert sum(p.tokens for p in mot.stream(PROMPT, params, mode=mode)) > 20  # runs long when not closed
        complete = len(steps)
        steps.clear()
        stream = mot.stream(PROMPT, params, mode=mode)
        next(stream)
        stream.close()
        at_close = len(steps)
        time.sleep(0.3)  # nothing keeps decoding in the background
        assert len(steps) == at_close and at_close <= 5 < complete
    finally:
        handle.remove()
