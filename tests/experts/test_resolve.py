"""Model resolution: local directories, GGUF files (converted once), hub ids offline, fingerprints."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from mot.errors import ModelNotFoundError, UsageError
from mot.experts import assets
from mot.experts.fingerprint import model_fingerprint
from mot.experts.resolve import expert_info, parse_spec, resolve_expert

TEXT = "def add(a, b):\n    return a + b\n"


def _logits(model, tokenizer, text=TEXT):
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------------------------- local dirs


def test_local_directory_gives_same_logits_as_direct_load(tiny_experts, load_tiny, tmp_path):
    model, tokenizer = resolve_expert(str(tiny_experts["qwen2"].path), cache_dir=tmp_path)
    ref_model, ref_tokenizer = load_tiny("qwen2")
    assert not model.training
    assert tokenizer(TEXT).input_ids == ref_tokenizer(TEXT).input_ids
    torch.testing.assert_close(_logits(model, tokenizer), _logits(ref_model, ref_tokenizer), rtol=0, atol=0)
    assert not any(tmp_path.iterdir())  # a save_pretrained directory needs no cache


def test_dtype_is_applied_and_accepts_names(tiny_experts, tmp_path):
    model, _ = resolve_expert(tiny_experts["gpt2"].path, dtype="bfloat16", cache_dir=tmp_path)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_path_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as err:
        resolve_expert(str(missing))
    message = str(err.value)
    assert str(missing) in message and "\n" not in message
    with pytest.raises(ModelNotFoundError, match="weights.gguf"):
        resolve_expert(str(tmp_path / "weights.gguf"))


def test_directory_without_config_says_what_layout_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json.*save_pretrained"):
        resolve_expert(tmp_path / "empty")


def test_offline_unknown_hub_id_names_the_model_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_expert("some-org/some-model-7b", cache_dir=tmp_path)
    message = str(err.value)
    assert "'some-org/some-model-7b'" in message and "not available offline" in message
    assert "local directory" in message and ".gguf" in message and "\n" not in message


def test_spec_kinds_are_classified_without_loading(tiny_experts, tmp_path):
    assert parse_spec(str(tiny_experts["llama"].path)).kind == "directory"
    assert parse_spec("Qwen/Qwen2.5-Coder-0.5B-Instruct").asset.name == "qwen2.5-coder-0.5b"
    assert parse_spec("SMOLLM2-135M").asset.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert parse_spec("google/gemma-3-270m").kind == "asset"
    assert parse_spec("meta-llama/Llama-3.2-1B").kind == "hub"
    with pytest.raises(UsageError):
        parse_spec("  ")


def test_bad_quantization_and_dtype_are_usage_errors(tiny_experts):
    with pytest.raises(UsageError, match="quantization"):
        resolve_expert(tiny_experts["llama"].path, quantization="3bit")
    with pytest.raises(UsageError, match="dtype"):
        resolve_expert(tiny_experts["llama"].path, dtype="float7")


@pytest.mark.slow
def test_8bit_quantization_runs_on_cpu_and_stays_close(tiny_experts, load_tiny):
    pytest.importorskip("bitsandbytes", reason="quantization needs `pip install bitsandbytes`")
    model, tokenizer = resolve_expert(tiny_experts["llama"].path, quantization="8bit")
    ref_model, _ = load_tiny("llama")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear8bitLt" and not model.training
    logits, ref = _logits(model, tokenizer), _logits(ref_model, tokenizer)
    assert (logits - ref).abs().max() < 0.05
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_missing_bitsandbytes_says_how_to_install(tiny_experts, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(UsageError, match="pip install 'bitsandbytes"):
        resolve_expert(tiny_experts["llama"].path, quantization="4bit")


def test_expert_info_reads_config_and_weight_headers(tiny_experts, load_tiny):
    info = expert_info(str(tiny_experts["llama"].path))
    model, tokenizer = load_tiny("llama")
    assert info["family"] == "llama"
    assert (info["hidden_size"], info["num_layers"]) == (32, 4)
    assert info["vocab_size"] == len(tokenizer)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert expert_info(model)["fingerprint"] == model_fingerprint(model)


# ---------------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_across_save_and_reload(load_tiny, tiny_experts, tmp_path):
    model, _ = load_tiny("qwen3")
    again, _ = resolve_expert(tiny_experts["qwen3"].path)
    assert model_fingerprint(model) == model_fingerprint(again)
    model.save_pretrained(tmp_path / "copy")
    copy, _ = resolve_expert(tmp_path / "copy", dtype=torch.bfloat16)
    assert model_fingerprint(copy) == model_fingerprint(model)  # fp32 and bf16 loads agree


def test_fingerprint_differs_across_families_and_seeds(load_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    prints = {family: model_fingerprint(load_tiny(family)[0]) for family in ("gpt2", "llama", "mistral")}
    assert len(set(prints.values())) == 3
    model, _ = load_tiny("llama")
    torch.manual_seed(1234)
    reseeded = AutoModelForCausalLM.from_config(model.config)
    assert model_fingerprint(reseeded) != prints["llama"]
    nudged = AutoModelForCausalLM.from_config(model.config)
    nudged.load_state_dict(model.state_dict())
    assert model_fingerprint(nudged) == prints["llama"]
    with torch.no_grad():
        nudged.model.layers[2].mlp.down_proj.weight.mul_(1.01)
    assert model_fingerprint(nudged) != prints["llama"]


# ---------------------------------------------------------------------------------------------- GGUF files


def write_llama_gguf(model, tokenizer, path):
    """Write a tiny HF Llama as an F32 GGUF the way llama.cpp's converter lays it out."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)

    def permute(w, heads):  # llama.cpp stores q/k rows interleaved for its rotary layout
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"embed_tokens": "token_embd", "norm": "output_norm", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm", "q_proj": "attn_q", "k_proj": "attn_k",
             "v_proj": "attn_v", "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
             "down_proj": "ffn_down"}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if key == "lm_head.weight":
            writer.add_tensor("output.weight", array)
            continue
        parts = key.split(".")
        if parts[1] == "layers":
            block, module = parts[2], parts[-2]
            if module == "q_proj":
                array = permute(array, cfg.num_attention_heads)
            elif module == "k_proj":
                array = permute(array, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{block}.{names[module]}.weight", np.ascontiguousarray(array))
        else:
            writer.add_tensor(f"{names[parts[1]]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama_gguf(load_tiny, tmp_path_factory):
    model, tokenizer = load_tiny("llama")
    return write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def test_gguf_file_is_converted_once_and_matches_the_original(tiny_llama_gguf, load_tiny, tmp_path,
                                                              monkeypatch):
    ref_model, ref_tokenizer = load_tiny("llama")
    model, tokenizer = resolve_expert(tiny_llama_gguf, cache_dir=tmp_path)
    assert not model.training
    assert tokenizer(TEXT).input_ids == ref_tokenizer(TEXT).input_ids
    torch.testing.assert_close(_logits(model, tokenizer), _logits(ref_model, ref_tokenizer),
                               rtol=1e-5, atol=1e-5)
    (converted,) = (tmp_path / "converted").iterdir()
    marker = json.loads((converted / assets.CONVERSION_MARKER).read_text())
    assert marker["sha256"] == assets.sha256_file(tiny_llama_gguf)
    assert (converted / "model.safetensors").is_file()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("mot.experts.resolve.convert_gguf", no_second_conversion)
    monkeypatch.setattr("mot.experts.assets.sha256_file", no_second_conversion)  # hash remembered too
    again, _ = resolve_expert(str(tiny_llama_gguf), cache_dir=tmp_path)
    assert model_fingerprint(again) == model_fingerprint(model) == model_fingerprint(ref_model)


def test_interrupted_conversion_leaves_nothing_that_is_trusted(tiny_llama_gguf, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_write_marker", killed)
    with pytest.raises(KeyboardInterrupt):
        resolve_expert(tiny_llama_gguf, cache_dir=tmp_path)
    assert list((tmp_path / "converted").iterdir()) == []
    monkeypatch.undo()
    model, _ = resolve_expert(tiny_llama_gguf, cache_dir=tmp_path)
    assert len(list((tmp_path / "converted").iterdir())) == 1


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / ".tmp-model-999999999-abc"
    stale.mkdir()
    mine = tmp_path / f".tmp-model-{os.getpid()}-abc"
    mine.mkdir()
    assets.remove_dead_temporaries(tmp_path)
    assert not stale.exists() and mine.exists()


# ---------------------------------------------------------------------------------------------- packaged assets


@pytest.fixture
def fake_asset(tiny_llama_gguf, tmp_path, monkeypatch):
    """A three-part 'pip-packaged' GGUF asset made from the tiny llama, on a temporary sys.path."""
    data = tiny_llama_gguf.read_bytes()
    site = tmp_path / "site"
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        package = site / f"mot_fake_gguf_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('asset packages must not be imported')\n")
        (package / "data" / f"part{i}.bin").write_bytes(data[cut[i]:cut[i + 1]])
        parts.append((package.name, f"data/part{i}.bin"))
    monkeypatch.syspath_prepend(str(site))
    asset = assets.GGUFAsset(
        name="tiny-fake", hub_id="mot-tests/Tiny-Fake", aliases=("tinyfake",), family="llama",
        quant="F32", packages=tuple((p.replace("_", "-"), "1.0") for p, _ in parts), parts=tuple(parts),
        gguf_name="tiny-fake.gguf", sha256=assets.sha256_file(tiny_llama_gguf), size=len(data),
        instruct=False,
    )
    monkeypatch.setitem(assets.KNOWN_ASSETS, asset.name, asset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return asset


def test_packaged_asset_offline_joins_verifies_and_converts_once(fake_asset, load_tiny, tmp_path,
                                                                  monkeypatch):
    cache = tmp_path / "cache"
    assert assets.asset_status("tinyfake", cache_dir=cache)["converted"] is None
    model, tokenizer = resolve_expert("mot-tests/Tiny-Fake", cache_dir=cache)
    ref_model, ref_tokenizer = load_tiny("llama")
    torch.testing.assert_close(_logits(model, tokenizer), _logits(ref_model, ref_tokenizer),
                               rtol=1e-5, atol=1e-5)
    status = assets.asset_status("tiny-fake", cache_dir=cache)
    assert status["installed"] and status["converted"] and status["gguf"] is None  # joined file cleaned up
    monkeypatch.setattr("mot.experts.resolve.convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    again, _ = resolve_expert("tinyfake", cache_dir=cache)
    assert model_fingerprint(again) == model_fingerprint(model)


def test_packaged_asset_with_wrong_bytes_is_refused(fake_asset, tmp_path, monkeypatch):
    from mot.errors import MotError

    wrong = assets.GGUFAsset(**{**fake_asset.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(assets.KNOWN_ASSETS, wrong.name, wrong)
    with pytest.raises(MotError, match="sha256.*reinstall"):
        resolve_expert("tinyfake", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf" / "tiny-fake.gguf").exists()


def test_missing_asset_package_says_how_to_install(fake_asset, tmp_path, monkeypatch):
    broken = assets.GGUFAsset(**{**fake_asset.__dict__,
                                 "parts": fake_asset.parts[:2] + (("mot_no_such_pkg", "x.bin"),)})
    monkeypatch.setitem(assets.KNOWN_ASSETS, broken.name, broken)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_expert("tinyfake", cache_dir=tmp_path / "cache")
    assert "mot download tiny-fake" in str(err.value) and "pip install --no-deps" in str(err.value)


def test_install_asset_pip_installs_only_the_missing_pinned_packages(fake_asset, tmp_path, monkeypatch):
    import subprocess
    import sys

    module, relative = fake_asset.parts[2]
    site = tmp_path / "site" / module
    hidden = tmp_path / "site" / "hidden"
    site.rename(hidden)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        hidden.rename(site)  # what pip would have put in place
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    assert assets.asset_status("tiny-fake", cache_dir=tmp_path / "cache")["missing_packages"] == [
        "mot-fake-gguf-part3==1.0"]
    path = assets.install_asset("tiny-fake", cache_dir=tmp_path / "cache")
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "mot-fake-gguf-part3==1.0"]]
    assert assets.sha256_file(path) == fake_asset.sha256
    assets.install_asset("tiny-fake", cache_dir=tmp_path / "cache")
    assert len(calls) == 1  # nothing missing: pip is not run again


def test_registry_pins_every_package_and_hash():
    for asset in assets.KNOWN_ASSETS.values():
        assert len(asset.sha256) == 64 and asset.size > 0
        assert all(version for _, version in asset.packages)
        assert assets.find_asset(asset.hub_id) is asset and assets.find_asset(asset.name) is asset
    assert assets.KNOWN_ASSETS["qwen2.5-coder-0.5b"].size == 491_400_064


# ---------------------------------------------------------------------------------------------- real models


def _require_asset(name):
    asset = assets.get_asset(name)
    missing = assets.missing_packages(asset)
    if missing:
        pytest.skip(f"{asset.hub_id} needs `mot download {name}` (missing {' '.join(missing)})")
    return asset


@pytest.mark.real
@pytest.mark.slow
def test_real_smollm2_converts_once_from_its_package_then_loads_from_cache(tmp_path_factory, monkeypatch):
    """A fresh cache: the first call joins nothing (one file), verifies, converts (~20-70 s on 2
    shared cores); the second call reads the converted safetensors (~1-2 s)."""
    _require_asset("smollm2-135m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path_factory.mktemp("mot-cache")
    first, _ = resolve_expert("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=cache)
    assert first.config.model_type == "llama"
    start = time.monotonic()
    again, tokenizer = resolve_expert("smollm2-135m", cache_dir=cache)
    assert time.monotonic() - start < 15
    assert len(tokenizer) == 49152
    assert model_fingerprint(again) == model_fingerprint(first)


# prompt, whether to use the chat template, words one of which the greedy answer must contain
REAL_PROMPTS = {
    "smollm2-135m": ("What is the capital of France? Answer in one word.", True, ("Paris",)),
    "qwen2.5-coder-0.5b": ("Write a Python function `square(x)` that returns x squared. Only code.", True,
                           ("def square", "x * x", "x**2", "x ** 2")),
    "gemma-3-270m": ("Question: What is the capital of France?\nAnswer:", False, ("Paris",)),
}


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_PROMPTS))
def test_real_packaged_expert_answers_sensibly(name, monkeypatch):
    """Uses the default cache ($MOT_CACHE_DIR or ~/.cache/mot): converts once per machine
    (SmolLM2 ~1 min, Gemma ~2-4 min, Qwen ~2-5 min on 2 shared cores), then loads in seconds."""
    asset = _require_asset(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = resolve_expert(name)
    assert model.config.model_type == asset.family and not model.training
    prompt, chat, expected = REAL_PROMPTS[name]
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        assert torch.isfinite(logits).all() and logits.shape[-1] >= len(tokenizer) - 1000
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert any(word in answer for word in expected), answer
