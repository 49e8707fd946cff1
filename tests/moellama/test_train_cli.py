"""`mot llama train | generate | export` end to end on a tiny corpus, in process (typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mot.cli.llama_cmd import app
from tests.moellama.conftest import TINY, sets, train_tiny_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-cli")
    overrides, result = train_tiny_run(root, 4)
    assert result.exit_code == 0, result.output
    return root, overrides, result.output


def test_train_writes_checkpoints_and_an_hf_native_model_with_its_records(trained):
    root, _, output = trained
    assert "trained 4 steps" in output
    model = root / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_summary.json", "metrics.jsonl",
                 "loss.png", "run_config.json"):
        assert (model / name).is_file(), name
    assert json.loads((model / "config.json").read_text())["model_type"] == "moellama"
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 4 * 32
    assert summary["active_parameters"] < summary["parameters"]
    assert (root / "run" / "step-000004" / "trainer_state.pt").is_file() and (root / "run" / "best").is_dir()

    from transformers import AutoModelForCausalLM

    import mot.moellama.hf  # noqa: F401  (registers model_type "moellama")

    assert type(AutoModelForCausalLM.from_pretrained(model)).__name__ == "MoeLlamaForCausalLM"


def test_resume_auto_continues_from_the_newest_checkpoint(trained):
    root, overrides, _ = trained
    more = [o for o in overrides if not o.startswith("training.max_steps")] + ["training.max_steps=6"]
    result = CliRunner().invoke(app, ["train", "--no-progress", "--resume", "auto", *sets(more)])
    assert result.exit_code == 0, result.output
    assert "trained 6 steps" in result.output
    steps = [json.loads(line)["step"] for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 6  # one uninterrupted history


def test_generate_runs_a_batch_of_prompts_and_greedy_is_deterministic(trained, tmp_path):
    root, _, _ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First Citizen:\nAll:\n", encoding="utf-8")
    args = ["generate", "--model-path", str(root / "model"), "--prompts-file", str(prompts), "--prompt", "café",
            "--max-tokens", "6", "--temperature", "0", *sets(TINY)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("--- [") == 3 and "First Citizen:" in first.output and "café" in first.output
    assert CliRunner().invoke(app, args).output == first.output


def test_export_writes_a_mixtral_model_and_bad_input_is_one_clear_line(trained, tmp_path):
    root, _, _ = trained
    out = tmp_path / "mixtral"
    result = CliRunner().invoke(app, ["export", "--model-path", str(root / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    assert (out / "tokenizer.json").is_file()

    from mot.errors import ConfigError, ModelNotFoundError

    missing = CliRunner().invoke(app, ["generate", "--model-path", str(tmp_path / "nope"), "--prompt", "x"])
    assert isinstance(missing.exception, ModelNotFoundError) and "mot llama train" in str(missing.exception)
    bad = CliRunner().invoke(app, ["train", "--set", "model.top_kk=2", "--set", "device.type=cpu"])
    assert isinstance(bad.exception, ConfigError) and "model.top_kk" in str(bad.exception)
