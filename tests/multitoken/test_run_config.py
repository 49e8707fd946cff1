"""``mot multitoken train -c CONFIG``: a config file trains as its flags do, a flag overrides the file, and a bad
config is one line with exit code 2."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mot.cli.main import main
from mot.errors import ConfigError, UsageError
from mot.multitoken.run_config import FLAG_KEYS, MultiTokenRunConfig, load_multitoken_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write_data(path, n=10):
    words = ["alpha", "beta", "gamma", "delta"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"q{i}: ", "response": " ".join(words[(j + i) % 4] for j in range(6))}) + "\n")


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_flag_defaults_are_the_config_defaults():
    from mot.cli.multitoken_cmd import train

    defaults = MultiTokenRunConfig()
    signature = inspect.signature(train).parameters
    for name, key in FLAG_KEYS.items():
        flag_default = signature[name].default.default
        expected = {"draft_vocab": 0}.get(name, _get(defaults, key))
        if name == "draft_vocab":
            assert defaults.heads.draft_vocab_size is None
        assert flag_default == expected, name


def test_the_example_config_is_the_readme_command():
    from_file = load_multitoken_run_config(CONFIGS / "multitoken_smollm2.json")
    from_flags = load_multitoken_run_config(flags={"model": "smollm2-135m", "data": Path("qa.jsonl"), "out": Path("runs/mt"),
                                        "heads": 4, "k_max": 3})
    assert from_file == from_flags
    assert from_file.heads.k_max == 3 and from_file.training.learning_rate == 1e-3
    assert str(from_file.out) == "runs/mt" and from_file.backbone.model == "smollm2-135m"


def test_set_then_flags_override_the_file(tmp_path):
    path = tmp_path / "mt.json"
    path.write_text(json.dumps({"backbone": {"model": "m"}, "data": "d.jsonl", "out": "o",
                                "heads": {"num_heads": 3, "k_max": 2}, "training": {"learning_rate": 0.01}}))
    cfg = load_multitoken_run_config(path, ["training.learning_rate=0.02", "heads.k_max=3"], {"k_max": 1, "batch": 2})
    assert (cfg.heads.num_heads, cfg.heads.k_max) == (3, 1)
    assert (cfg.training.learning_rate, cfg.training.batch_size) == (0.02, 2)
    assert cfg.curriculum_config().learning_rate == 0.02 and cfg.curriculum_config().device == "cpu"
    assert cfg.multitoken_config().k_max == 1


def test_missing_required_settings_are_usage_errors():
    with pytest.raises(UsageError, match=r"give --model \(or backbone.model"):
        load_multitoken_run_config(flags={"data": Path("d"), "out": Path("o")})


@pytest.mark.parametrize("config, message", [
    ({"heads": {"k_maxx": 2}}, "heads.k_maxx: unknown key (did you mean 'k_max'?)"),
    ({"training": {"val_fraction": 1.5}}, "training.val_fraction: expected less than 1, got 1.5"),
    ({"backbone": {"model": "m"}, "data": "d", "out": "o", "training": {"batch_size": "eight"}},
     "training.batch_size: expected a valid integer, unable to parse string as an integer, got 'eight'"),
    ({"modell": "m"}, "modell: unknown key"),
])
def test_a_bad_config_is_one_line_with_exit_code_2(tmp_path, capsys, config, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main(["multitoken", "train", "-c", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {message}"), lines


def test_a_bad_heads_value_in_the_file_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"backbone": {"model": "m"}, "data": "d", "out": "o",
                                "heads": {"num_heads": 3, "k_max": 5}}))
    with pytest.raises(UsageError) as err:
        load_multitoken_run_config(path).multitoken_config()
    assert err.value.exit_code == 2 and not isinstance(err.value, ConfigError)


# ------------------------------------------------------------------------- end to end on a tiny backbone


def _train(args):
    from mot.cli.multitoken_cmd import app

    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_a_config_file_trains_like_the_same_flags(tiny_experts, tmp_path):
    data = tmp_path / "data.jsonl"
    _write_data(data)
    backbone = str(tiny_experts["qwen2"].path)
    flags_out, file_out = tmp_path / "flags", tmp_path / "file"
    _train(["--model", backbone, "--data", str(data), "--out", str(flags_out), "--heads", "3", "--k_max", "2",
            "--stage1_epochs", "1", "--stage2_epochs", "1", "--batch", "4", "--lr", "2e-3", "--max-length", "32",
            "--draft-vocab", "64", "--self-distill", "chain", "--seed", "3"])
    config = tmp_path / "mt.json"
    config.write_text(json.dumps({
        "backbone": {"model": backbone}, "data": str(data), "out": str(file_out),
        "heads": {"num_heads": 3, "k_max": 2, "draft_vocab_size": 64},
        "training": {"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 4, "learning_rate": 2e-3,
                     "max_length": 32, "self_distill": "chain", "seed": 3}}))
    _train(["-c", str(config)])

    saved = [json.loads((out / "run_config.json").read_text()) for out in (flags_out, file_out)]
    assert saved[0].pop("out") == str(flags_out) and saved[1].pop("out") == str(file_out)
    assert saved[0] == saved[1]
    assert saved[0]["heads"]["k_max"] == 2 and saved[0]["training"]["learning_rate"] == 2e-3
    for stage in ("s1", "s2"):
        metas = [json.loads((out / stage / "moe_meta.json").read_text()) for out in (flags_out, file_out)]
        assert metas[0]["config"] == metas[1]["config"] and metas[0]["config"]["draft_vocab_size"] == 64
        assert metas[0]["metrics"] == metas[1]["metrics"] and metas[0]["metrics"]


def test_a_flag_overrides_the_config_file(tiny_experts, tmp_path, monkeypatch):
    import mot.multitoken.curriculum as curriculum

    data = tmp_path / "data.jsonl"
    _write_data(data)
    config = tmp_path / "mt.json"
    config.write_text(json.dumps({
        "backbone": {"model": str(tiny_experts["qwen2"].path)}, "data": str(data), "out": str(tmp_path / "o"),
        "heads": {"num_heads": 3, "k_max": 2}, "training": {"learning_rate": 0.01, "batch_size": 4}}))
    seen = {}

    def fake(model, train, out, cfg, val_examples=None):
        seen.update(k_max=model.config.k_max, lr=cfg.learning_rate, batch=cfg.batch_size, out=out)
        return {}

    monkeypatch.setattr(curriculum, "train_curriculum", fake)
    _train(["-c", str(config), "--k_max", "3", "--batch", "2"])
    assert seen == {"k_max": 3, "lr": 0.01, "batch": 2, "out": tmp_path / "o"}
    saved = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert (saved["heads"]["k_max"], saved["training"]["batch_size"], saved["training"]["learning_rate"]) == \
        (3, 2, 0.01)
