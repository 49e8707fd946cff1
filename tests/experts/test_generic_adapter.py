"""Oracle tests for the generic adapter (``mot.experts.generic``): the walk must be the HF model, exactly.

Every family is a tiny random HF causal LM built offline (``AutoConfig.for_model`` -> ``from_config``, 4
layers, fp32) over the tiny Llama expert's BPE tokenizer.  Oracles: the HF forward on a left-padded batch,
the same forward for cached decoding (a prefix, single tokens, then a chunk) and for a walk in stacks,
HF ``generate()`` for greedy decoding.  Configs switch on what each family does differently (multipliers,
scales and soft-caps away from 1, sliding windows shorter than the texts, ALiBi, projections).
"""

from __future__ import annotations

import pytest
import torch

from mot.experts import ExpertAdapter, UnsupportedArchitectureError, adapter_for, positions_from_mask
from mot.experts.generic import GenericAdapter
from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig, encode_pair

ATOL = 1e-5
TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "import os, sys\n",
    "class Point:\n    x: int = 0\n    y: int = 0\n\n\np = Point()",
]
ALTERNATING = ["sliding_attention", "full_attention"] * 2
LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512}
# case -> (HF model_type, tiny config kwargs)
CASES: dict[str, tuple[str, dict]] = {
    "olmo": ("olmo", {**LLAMA_LIKE, "clip_qkv": 0.5}),
    "olmo2": ("olmo2", LLAMA_LIKE),
    "olmo3": ("olmo3", {**LLAMA_LIKE, "sliding_window": 6, "layer_types": ALTERNATING}),
    "granite": ("granite", {**LLAMA_LIKE, "embedding_multiplier": 3.0, "logits_scaling": 0.25,
                            "residual_multiplier": 0.5, "attention_multiplier": 0.4}),
    "phi": ("phi", {**LLAMA_LIKE, "partial_rotary_factor": 0.5, "qk_layernorm": True}),
    "falcon": ("falcon", {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4}),
    "falcon-alibi": ("falcon", {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                                "alibi": True, "parallel_attn": False}),
    "falcon-new-arch": ("falcon", {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                                   "num_kv_heads": 2, "new_decoder_architecture": True}),
    "stablelm": ("stablelm", {**LLAMA_LIKE, "partial_rotary_factor": 0.25, "qk_layernorm": True}),
    "stablelm-parallel": ("stablelm", {**LLAMA_LIKE, "use_parallel_residual": True}),
    "cohere": ("cohere", {**LLAMA_LIKE, "logit_scale": 0.5, "use_qk_norm": True}),
    "mixtral": ("mixtral", {**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6}),
    "qwen2_moe": ("qwen2_moe", {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2,
                                "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32,
                                "use_sliding_window": True, "sliding_window": 6, "max_window_layers": 4}),
    "qwen3_moe": ("qwen3_moe", {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2, "head_dim": 8,
                                "moe_intermediate_size": 16, "use_sliding_window": True, "sliding_window": 6}),
    "gemma2": ("gemma2", {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 6, "final_logit_softcapping": 0.5,
                          "attn_logit_softcapping": 0.5}),
    "mpt": ("mpt", {"d_model": 32, "n_layers": 4, "n_heads": 4, "max_seq_len": 128}),
    "bloom": ("bloom", {"hidden_size": 32, "n_layer": 4, "n_head": 4}),
    "bloom-post-ln-residual": ("bloom", {"hidden_size": 32, "n_layer": 4, "n_head": 4,
                                         "apply_residual_connection_post_layernorm": True}),
    "opt": ("opt", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "max_position_embeddings": 512, "word_embed_proj_dim": 32}),
    "opt-350m-style": ("opt", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                               "max_position_embeddings": 512, "word_embed_proj_dim": 16,
                               "do_layer_norm_before": False}),
}
FAMILIES = sorted({family for family, _ in CASES.values()})


def build(case: str, tokenizer, seed: int = 0):
    """A tiny random HF model of ``case`` over ``tokenizer`` (eval, fp32)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    family, kwargs = CASES[case]
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), **special, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    for key, value in special.items():
        setattr(model.generation_config, key, value)
    return model


@pytest.fixture(scope="module")
def tokenizer(load_tiny):
    return load_tiny("llama")[1]


@pytest.fixture(scope="module", params=list(CASES))
def expert(request, tokenizer) -> ExpertAdapter:
    return adapter_for(build(request.param, tokenizer), tokenizer)


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The oracle: the HF forward with the cumsum positions HF ``generate()`` uses."""
    return model(ids, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1])).logits


def max_diff_on_real(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> float:
    real = mask.bool()
    assert actual.shape == expected.shape
    assert torch.isfinite(actual[real]).all()
    return (actual[real] - expected[real]).abs().max().item()


def feed(expert: ExpertAdapter, state, ids, mask, stacks=None) -> torch.Tensor:
    hidden = expert.embed(ids, mask, state)
    for start, stop in stacks or [(0, expert.num_layers)]:
        hidden = expert.run_layers(hidden, start, stop, state)
    return expert.logits(hidden)


def test_every_listed_family_is_supported_by_the_generic_adapter():
    from mot.experts import SUPPORTED_FAMILIES

    assert len(FAMILIES) == 15 and set(FAMILIES) <= set(SUPPORTED_FAMILIES)


def test_walk_and_cached_decode_equal_the_hf_forward(expert):
    assert isinstance(expert, GenericAdapter) and expert.num_layers == 4
    enc = expert.encode(TEXTS)
    ids, mask = enc.input_ids, enc.attention_mask
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max() and lengths.max() > 8  # left padding; longer than every window
    expected = hf_logits(expert.model, ids, mask)
    width = ids.shape[1]
    prefix = width - 7
    state = expert.new_state()
    with torch.no_grad():
        walked = expert.forward(ids, mask)
        stacked = feed(expert, expert.new_state(), ids, mask, stacks=[(0, 1), (1, 1), (1, 3), (3, 4)])
        pieces = [feed(expert, state, ids[:, :prefix], mask[:, :prefix])]
        for t in range(prefix, prefix + 4):  # one token at a time
            pieces.append(feed(expert, state, ids[:, t:t + 1], mask[:, t:t + 1]))
        pieces.append(feed(expert, state, ids[:, prefix + 4:], mask[:, prefix + 4:], stacks=[(0, 2), (2, 4)]))
    assert walked.shape == (len(TEXTS), width, expert.vocab_size)
    assert (diff := max_diff_on_real(walked, expected, mask)) <= ATOL, f"uncached walk: {diff:.3g}"
    assert torch.equal(walked, stacked)
    assert state.seen_tokens == width and state.cache.get_seq_length() == width
    assert (diff := max_diff_on_real(torch.cat(pieces, dim=1), expected, mask)) <= ATOL, f"cached: {diff:.3g}"
    # each row alone (no padding) gives the same logits as its left-padded row
    for row, text in enumerate(TEXTS[:2]):
        alone = expert.encode([text]).input_ids
        with torch.no_grad():
            single = expert.forward(alone, None)[0]
        n = alone.shape[1]
        assert (single - walked[row, -n:]).abs().max().item() <= ATOL


def test_crop_then_refeed_and_greedy_decoding_equal_hf_generate(expert):
    enc = expert.encode(TEXTS)
    ids, mask = enc.input_ids, enc.attention_mask
    width = ids.shape[1]
    state = expert.new_state()
    steps = 5
    with torch.no_grad():
        before = feed(expert, state, ids, mask)
        expert.crop(state, width - 4)
        feed(expert, state, ids[:, :2].flip(0), None)  # something else, then roll back again
        expert.crop(state, width - 4)
        after = feed(expert, state, ids[:, -4:], mask[:, -4:])
        hf = expert.model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=steps)[:, width:]
        ours, logits = [], after
        for _ in range(steps):
            token = logits[:, -1].argmax(-1, keepdim=True)
            ours.append(token)
            logits = feed(expert, state, token, None)
    assert (after - before[:, -4:]).abs().max().item() <= ATOL
    ours = torch.cat(ours, dim=1)
    eos = expert.model.generation_config.eos_token_id
    for row in range(ours.shape[0]):
        got, want = ours[row].tolist(), hf[row].tolist()
        if eos in want:  # HF pads after a row's eos
            want = want[:want.index(eos) + 1]
        assert want and got[:len(want)] == want, f"row {row}: {got} != {want}"


@pytest.mark.parametrize("case", ["granite", "cohere", "gemma2"])
def test_family_hooks_matter(case, tokenizer):
    """Guards the oracles above: without the family's hook the walk would differ from HF."""
    expert = adapter_for(build(case, tokenizer), tokenizer)
    enc = expert.encode(TEXTS[:1])
    with torch.no_grad():
        state = expert.new_state()
        out = expert.run_layers(expert.embed(enc.input_ids, None, state), 0, expert.num_layers, state)
        plain = expert.model.get_output_embeddings()(expert.final_norm(out))
        hooked = expert.logits(out)
    assert (plain - hooked).abs().max() > 1e-3


def test_refused_families_get_one_line_saying_why():
    class Config:
        model_type = "mamba"

    class Model(torch.nn.Module):
        config = Config()

    with pytest.raises(UnsupportedArchitectureError) as info:
        adapter_for(Model(), tokenizer=None)
    message = str(info.value)
    assert "'mamba'" in message and "KV cache" in message and "\n" not in message


def test_generic_adapter_refuses_layers_without_a_kv_cache():
    """The structural check itself, on a real tiny Mamba (its blocks take a recurrent state, no KV cache)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mamba", vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4)
    with pytest.raises(UnsupportedArchitectureError, match=r"MambaBlock\.forward takes no KV cache"):
        GenericAdapter(AutoModelForCausalLM.from_config(config), tokenizer=None)


def test_mpt_refuses_more_tokens_than_its_alibi_table(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mpt", vocab_size=len(tokenizer), d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
    expert = adapter_for(AutoModelForCausalLM.from_config(config).eval(), tokenizer)
    with torch.no_grad(), pytest.raises(ValueError, match="exceed the model's max_seq_len 8"):
        expert.forward(torch.zeros(1, 9, dtype=torch.long))


def test_mot_with_a_moe_expert_and_zero_gates_is_that_expert_alone(load_tiny, tokenizer):
    """A MoT over the tiny GPT-2 expert and a tiny Mixtral: closed gates give each primary exactly its own
    logits (the HF forward of that expert), with the other expert as a peer."""
    gpt2, gpt2_tok = load_tiny("gpt2")
    mixtral = build("mixtral", tokenizer, seed=3)
    torch.manual_seed(0)
    mot = MixtureOfThoughts([gpt2, mixtral], [gpt2_tok, tokenizer],
                            MoTConfig(num_stacks=2, top_k=2, interaction_heads=4, dropout=0.0, router_hidden_dim=16),
                            expert_specs=["gpt2", "mixtral"], encoder=HashingEncoder(32)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in mot.interactions:  # random interaction weights, gates closed
            for name, param in layer.named_parameters():
                if name.startswith("gates"):
                    param.fill_(0.0)
                elif not name.startswith("norms"):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    assert type(mot.adapters[1]).__name__ == "MixtralAdapter"
    from mot.routing import RoutingDecision

    prompt, code = "# add two numbers\n", "def add(a, b):\n    total = a + b\n    return total\n"
    for primary, (model, tok) in enumerate([(gpt2, gpt2_tok), (mixtral, tokenizer)]):
        rows = torch.tensor([[primary, 1 - primary]])
        weights = torch.tensor([[0.6, 0.4]])
        probs = torch.full((1, 2), 0.0).scatter(1, rows, weights)
        routing = RoutingDecision(logits=probs.clamp_min(1e-6).log(), probs=probs, indices=rows, weights=weights,
                                  primary=rows[:, 0])
        out = mot([prompt], [code], routing=routing)
        ids = encode_pair(tok, prompt, code).input_ids
        with torch.no_grad():
            hf = model(ids[None]).logits[0]
        torch.testing.assert_close(out.logits[0], hf, atol=ATOL, rtol=0)
