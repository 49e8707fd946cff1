"""The model registry: names fixed at start, NAME=SPEC parsing, every model kind behind one API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mot.errors import UsageError
from mot.generation import GenerationParams
from mot.serve import ModelRegistry, create_app, parse_model_option
from tests.serve.conftest import ScriptedGenerator


def test_model_options_parse_and_bad_names_are_usage_errors():
    assert parse_model_option("tiny=./models/tiny") == ("tiny", "./models/tiny")
    assert parse_model_option("/models/smol.gguf") == ("smol", "/models/smol.gguf")
    with pytest.raises(UsageError, match="NAME=SPEC"):
        parse_model_option("=x")
    registry = ModelRegistry()
    registry.register("a", ScriptedGenerator())
    with pytest.raises(UsageError, match="twice"):
        registry.register("a", ScriptedGenerator())
    with pytest.raises(UsageError, match="not allowed"):
        registry.register("../etc", ScriptedGenerator())
    with pytest.raises(UsageError, match="no models"):
        ModelRegistry.from_specs([])


def test_spec_directory_loads_through_resolve_expert(tiny_experts):
    registry = ModelRegistry.from_specs([f"tiny={tiny_experts['gpt2'].path}"])
    entry = registry.get("tiny")
    assert entry.kind == "hf" and entry.context_length == 512
    reply = TestClient(create_app(registry)).post(
        "/v1/completions", json={"model": "tiny", "prompt": "for i in", "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


def test_mixture_of_thoughts_is_served_in_both_modes_with_routing(load_tiny):
    import torch

    from mot.thoughts import HashingEncoder, MixtureOfThoughts, MoTConfig

    experts = [load_tiny(f) for f in ("gpt2", "llama")]
    torch.manual_seed(0)
    mot = MixtureOfThoughts([m for m, _ in experts], [t for _, t in experts],
                            MoTConfig(num_stacks=2, top_k=2, interaction_heads=4, dropout=0.0, router_hidden_dim=16),
                            expert_specs=["gpt2", "llama"], encoder=HashingEncoder(32)).eval()
    registry = ModelRegistry()
    registry.register_mot("moe", mot)
    client = TestClient(create_app(registry))
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert set(cards) == {"moe:fast", "moe:full"} and all(c["routed"] for c in cards.values())
    expected = mot.get_routing_info("user: hi\nassistant: ")
    for name in cards:
        reply = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}).json()
        assert reply["routing"]["primary_expert"] == expected["primary_expert"]
        assert reply["routing"]["active_experts"] == expected["active_experts"]
        assert reply["routing"]["expert_weights"] == pytest.approx(expected["expert_weights"])
    streamed = client.post("/v1/completions", json={"model": "moe:full", "prompt": "def f(", "max_tokens": 4,
                                                    "temperature": 0, "stream": True})
    assert streamed.status_code == 200 and '"routing"' in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
    direct = mot.generate(["def f("], GenerationParams(max_new_tokens=4), mode="full")[0]
    text = client.post("/v1/completions", json={"model": "moe:full", "prompt": "def f(", "max_tokens": 4,
                                                "temperature": 0}).json()["choices"][0]["text"]
    assert text == direct


def test_moellama_directory_is_served_with_its_own_sampler(tmp_path, load_tiny):
    import torch

    from mot.moellama.config import ModelConfig
    from mot.moellama.generate import MoeLlamaGenerator
    from mot.moellama.hf import MoeLlamaConfig, MoeLlamaForCausalLM

    _, tokenizer = load_tiny("gpt2")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tokenizer), dim=32, num_layers=2, num_heads=4, num_kv_heads=2, num_experts=4,
                      top_k=2, ffn_dim=48, max_seq_len=64)
    MoeLlamaForCausalLM(MoeLlamaConfig.from_model_config(cfg)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    registry = ModelRegistry.from_specs([f"ml={tmp_path}"])
    entry = registry.get("ml")
    assert entry.kind == "moellama" and isinstance(entry.generator, MoeLlamaGenerator)
    client = TestClient(create_app(registry))
    assert client.get("/v1/models").json()["data"][0]["context_length"] == 64
    body = {"model": "ml", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    reply = client.post("/v1/chat/completions", json=body).json()
    expected = entry.generator.generate([body["messages"]], GenerationParams(max_new_tokens=5))[0]
    assert reply["choices"][0]["message"]["content"] == expected
    assert client.post("/v1/chat/completions", json={**body, "max_tokens": 64}).status_code == 400


def test_multitoken_checkpoint_is_served_verified_with_prompt_lookup(load_tiny, tiny_experts, tmp_path):
    """A multi-token checkpoint directory (moe_meta.json) loads as its own kind; the reply is exactly the
    backbone's greedy output (verified decoding with prompt lookup)."""
    import torch

    from mot.multitoken import MultiTokenConfig, MultiTokenModel
    from mot.multitoken.io import save_multitoken

    backbone, tokenizer = load_tiny("llama")
    torch.manual_seed(0)
    model = MultiTokenModel(backbone, tokenizer, MultiTokenConfig(num_heads=3, k_max=3),
                            backbone_spec=str(tiny_experts["llama"].path))
    save_multitoken(model, tmp_path / "s2", stage="s2", metrics={})
    registry = ModelRegistry.from_specs([f"mt={tmp_path / 's2'}"])
    entry = registry.get("mt")
    assert entry.kind == "multitoken" and entry.generator.lookup > 0
    prompt = "import os\nimport sys\nimport os\nimport"
    reply = TestClient(create_app(registry)).post(
        "/v1/completions", json={"model": "mt", "prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert reply.status_code == 200, reply.text
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    reference = backbone.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                  pad_token_id=0)[0, ids.shape[1]:]
    assert reply.json()["choices"][0]["text"] == tokenizer.decode(reference, skip_special_tokens=True)
    assert entry.generator.stats.lookup_passes > 0  # the repeated prompt gave the lookup something to copy
    assert entry.generator.tree > 0  # the default serves a draft tree too
    # the decoding options come from `mot serve --multitoken-lookup/--multitoken-tree`
    other = ModelRegistry.from_specs([f"mt={tmp_path / 's2'}"], multitoken={"lookup": 0, "tree": 4}).get("mt")
    assert (other.generator.lookup, other.generator.tree) == (0, 4)
    reply = TestClient(create_app(ModelRegistry.from_specs([f"mt={tmp_path / 's2'}"], multitoken={"tree": 5}))).post(
        "/v1/completions", json={"model": "mt", "prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert reply.json()["choices"][0]["text"] == tokenizer.decode(reference, skip_special_tokens=True)
    with pytest.raises(UsageError, match="must be >= 0"):
        ModelRegistry.from_specs([f"mt={tmp_path / 's2'}"], multitoken={"tree": -1})
