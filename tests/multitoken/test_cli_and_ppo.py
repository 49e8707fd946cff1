"""``mot multitoken train|infer`` end to end on a tiny backbone, and the PPO reward."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mot.errors import DataError, UsageError
from mot.multitoken import PPOConfig, composite_reward


def _write_data(path, n=10):
    words = ["alpha", "beta", "gamma", "delta"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"q{i}: ", "response": " ".join(words[(j + i) % 4] for j in range(6))}) + "\n")


def _cli(tiny_experts, tmp_path, family: str):
    """``(app, runner, data file, backbone path, output dir)`` for a CLI run on a tiny ``family`` backbone."""
    from mot.cli.multitoken_cmd import app

    data = tmp_path / "data.jsonl"
    _write_data(data)
    return app, CliRunner(), data, str(tiny_experts[family].path), tmp_path / "out"


def test_cli_trains_every_stage_and_infers_the_backbone_greedy_output(tiny_experts, load_tiny, tmp_path):
    app, runner, data, backbone, out = _cli(tiny_experts, tmp_path, "qwen2")
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(data), "--out", str(out),
                                 "--heads", "3", "--k_max", "2", "--stage1_epochs", "1", "--stage2_epochs", "1",
                                 "--ppo_steps", "2", "--batch", "4", "--lr", "1e-3", "--quant", "none",
                                 "--max-length", "32", "--draft-vocab", "64", "--chain-conditioning"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert all((out / name / "moe_meta.json").is_file() for name in ("s1", "s2", "ppo_final"))

    result = runner.invoke(app, ["infer", "--ckpt", str(out / "ppo_final"), "--prompt", "def f(x):",
                                 "--max_tokens", "12", "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    model, tokenizer = load_tiny("qwen2")
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    reference = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                               pad_token_id=0)[0, ids.shape[1]:]
    assert payload["text"] == tokenizer.decode(reference, skip_special_tokens=True)
    assert payload["lossy"] is False
    result = runner.invoke(app, ["infer", "--ckpt", str(out / "s2"), "--prompt", "def f(x):", "--max_tokens", "12",
                                 "--json", "--lookup", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["text"] == tokenizer.decode(reference, skip_special_tokens=True)
    assert set(payload["stats"]["lookup"]) == {"passes", "drafted", "accepted"}
    for tree in ("0", "5"):  # the heads' chain, and a draft tree: both exactly the backbone's text
        result = runner.invoke(app, ["infer", "--ckpt", str(out / "s2"), "--prompt", "def f(x):", "--max_tokens",
                                     "12", "--json", "--tree", tree])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert json.loads(result.stdout.strip().splitlines()[-1])["text"] == \
            tokenizer.decode(reference, skip_special_tokens=True)
    result = runner.invoke(app, ["infer", "--ckpt", str(out / "s2"), "--prompt", "x", "--tree", "-1"])
    assert isinstance(result.exception, UsageError) and "--tree" in str(result.exception)

    result = runner.invoke(app, ["infer", "--ckpt", str(out / "s1"), "--prompt", "def f(x):", "--max_tokens", "6",
                                 "--no-verify"])
    assert result.exit_code == 0
    assert "lossy" in result.output.lower()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "response": "b"}\n{"question": 1}\n')
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(bad), "--out", str(tmp_path / "o2")])
    assert isinstance(result.exception, DataError) and "bad.jsonl:2" in str(result.exception)
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(data), "--out", str(tmp_path / "o3"),
                                 "--heads", "3", "--k_max", "5"])
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(data), "--out", str(tmp_path / "o4"),
                                 "--self-distill", "sample"])
    assert isinstance(result.exception, UsageError) and "--self-distill" in str(result.exception)
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(data), "--out", str(tmp_path / "o5"),
                                 "--head-type", "tower"])
    assert isinstance(result.exception, UsageError) and "head_type" in str(result.exception)


def test_cli_trains_draft_layer_heads_and_infers_exactly(tiny_experts, load_tiny, tmp_path):
    app, runner, data, backbone, out = _cli(tiny_experts, tmp_path, "llama")
    result = runner.invoke(app, ["train", "--model", backbone, "--data", str(data), "--out", str(out),
                                 "--heads", "3", "--k_max", "3", "--stage1_epochs", "1", "--stage2_epochs", "1",
                                 "--batch", "4", "--max-length", "32", "--head-type", "layer"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = json.loads((out / "s2" / "moe_meta.json").read_text())
    assert meta["config"]["head_type"] == "layer" and meta["config"]["layer_ffn"] >= 1
    model, tokenizer = load_tiny("llama")
    ids = tokenizer("def f(x):", return_tensors="pt").input_ids
    reference = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                               pad_token_id=0)[0, ids.shape[1]:]
    for tree in ("0", "4"):
        result = runner.invoke(app, ["infer", "--ckpt", str(out / "s2"), "--prompt", "def f(x):", "--max_tokens",
                                     "12", "--json", "--tree", tree])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert json.loads(result.stdout.strip().splitlines()[-1])["text"] == \
            tokenizer.decode(reference, skip_special_tokens=True)


def test_composite_reward_scores_accuracy_order_efficiency_and_stop():
    cfg = PPOConfig(accuracy_weight=1.0, order_weight=1.0, efficiency_weight=1.0, stop_weight=1.0)
    reference = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, -100, -100]])
    drafts = torch.tensor([[5, 6, 9], [6, 5, 7], [1, 1, 1], [5, 8, 8]])
    chain = torch.tensor([2, 2, 0, 3])
    reward, parts = composite_reward(drafts, chain, reference, k_max=4, cfg=cfg)
    # row 0: both drafts right -> accuracy 1, order 1, efficiency 3/4, stop 1
    assert reward[0].item() == pytest.approx(1 + 1 + 0.75 + 1)
    # row 1: both wrong but swapped -> accuracy 0, order 0, efficiency 1/4, stop 1
    assert reward[1].item() == pytest.approx(0 + 0 + 0.25 + 1)
    # row 2: no drafts -> accuracy 1, order 1, efficiency 1/4, stop 1
    assert reward[2].item() == pytest.approx(1 + 1 + 0.25 + 1)
    # row 3: one right, two past the end of the reference -> stop 1/3
    assert reward[3].item() == pytest.approx(1 / 3 + 1 + 0.5 + 1 / 3)
    assert parts["accepted_tokens_per_pass"] == pytest.approx((3 + 1 + 1 + 2) / 4)


@pytest.mark.parametrize("content", [b"\x00garbage, not a torch file", "wrong structure"])
def test_a_bad_ppo_state_is_one_line_and_kept(make_model, tmp_path, content):
    from mot.errors import CheckpointError
    from mot.multitoken import Example, train_ppo
    from mot.multitoken.data import SequenceDataset

    model = make_model("llama")
    dataset = SequenceDataset([Example("q: ", "alpha beta gamma", 1), Example("r: ", "beta gamma", 1)],
                              model.tokenizer, 32, eos_id=1)
    dataset.set_greedy([torch.tensor([5, 6, 7]), torch.tensor([8, 9])])
    state = tmp_path / "state.pt"
    if isinstance(content, bytes):
        state.write_bytes(content)
    else:
        torch.save({"step": 3}, state)  # another kind of state: no heads, no optimizer
    before = state.read_bytes()
    with pytest.raises(CheckpointError, match=r"state\.pt: not a PPO state this run can resume .*move it away") as err:
        train_ppo(model, dataset, tmp_path, PPOConfig(steps=1))
    assert "\n" not in str(err.value) and state.read_bytes() == before
