"""`mot serve --model x=<run>/step-000010` serves a moellama Trainer checkpoint, the directory `mot llama chat`
opens, and answers exactly what `mot llama generate` writes greedily for the same prompt."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mot.cli.llama_cmd import app as llama_app
from mot.loading import load_generator, moellama_model_dir, spec_kind
from mot.serve import ModelRegistry, create_app
from tests.moellama.conftest import CORPUS

TINY = ["model.vocab_size=320", "model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.num_experts=4", "model.top_k=2", "model.ffn_dim=48", "model.max_seq_len=64",
        "training.seq_len=32", "training.batch_size=4", "training.learning_rate=0.003", "training.warmup_steps=2",
        "training.eval_steps=5", "training.max_val_windows=4", "training.val_fraction=0.25", "device.type=cpu",
        "inference.max_new_tokens=8"]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-step")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS[:16]):
        (corpus / f"doc{i:02d}.txt").write_text(text * 3, encoding="utf-8")
    overrides = [*TINY, f"training.dataset={corpus}", f"paths.output_dir={root / 'run'}",
                 f"paths.model_path={root / 'model'}", "training.max_steps=10"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(llama_app, ["train", "--no-progress", *_sets(overrides)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert (root / "run" / "step-000010" / "trainable.safetensors").is_file()
    assert not (root / "run" / "step-000010" / "model.safetensors").exists()  # a Trainer checkpoint, not HF-native
    return root / "run"


def test_the_server_serves_a_moellama_step_checkpoint_like_mot_llama_generate(run_dir):
    step = run_dir / "step-000010"
    assert spec_kind(str(step)) == "moellama" and moellama_model_dir(step) == step
    registry = ModelRegistry.from_specs([f"x={step}"], device="cpu", dtype="float32")  # as `mot serve` builds it
    entry = registry.get("x")
    assert registry.names() == ["x"] and entry.kind == "moellama" and entry.context_length == 64

    reply = TestClient(create_app(registry)).post("/v1/chat/completions", json={
        "model": "x", "messages": [{"role": "user", "content": "Speak, speak."}], "max_tokens": 6,
        "temperature": 0})
    assert reply.status_code == 200, reply.text
    served = reply.json()["choices"][0]["message"]["content"]

    prompt = "user: Speak, speak.\nassistant:"  # the chat transcript every plain model sees
    result = CliRunner().invoke(llama_app, ["generate", "--model-path", str(step), "--prompt", prompt,
                                            "--max-tokens", "6", "--temperature", "0", *_sets(TINY)])
    assert result.exit_code == 0, result.output
    generated = result.output[:-1] if result.output.endswith("\n") else result.output
    assert generated.startswith(prompt)
    assert served and served == generated[len(prompt):]
    assert reply.json()["usage"]["completion_tokens"] >= 1


def test_a_run_directory_opens_its_best_or_newest_checkpoint(run_dir):
    assert spec_kind(str(run_dir)) == "moellama"
    assert moellama_model_dir(run_dir) in (run_dir / "best", run_dir / "step-000010")
    generator = load_generator(str(run_dir), name="run")
    assert generator.name == "run" and generator.context_length == 64
