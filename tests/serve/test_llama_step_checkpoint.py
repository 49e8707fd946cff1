"""`mot serve --model x=<run>/step-000010` serves a moellama Trainer checkpoint, the directory `mot llama chat`
opens, and answers exactly what `mot llama generate` writes greedily for the same prompt."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mot.cli.llama_cmd import app as llama_app
from mot.loading import load_generator, moellama_model_dir, spec_kind
from mot.serve import ModelRegistry, create_app
from tests.moellama.conftest import TINY, sets, train_tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-step")
    _, result = train_tiny_run(root, 10, "training.eval_steps=5")
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
                                            "--max-tokens", "6", "--temperature", "0", *sets([*TINY, "training.eval_steps=5"])])
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
