"""Curriculum stages: data errors, learning, self-contained checkpoints, continuing and resuming."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mot.errors import CheckpointError, DataError
from mot.generation import GenerationParams
from mot.multitoken import CurriculumConfig, Example, decode, load_multitoken, read_jsonl, train_curriculum

from .test_decoding import _reference

QUESTIONS = ["def f(x):", "import os", "class A:", "# note"]


def _examples(n: int = 16) -> list[Example]:
    words = ["alpha", "beta", "gamma", "delta"]
    return [Example(f"q{i}: ", " ".join(words[(j + i) % 4] for j in range(8)), i + 1) for i in range(n)]


def _tokens_per_pass(model, prompts) -> float:
    new = passes = 0
    for prompt in prompts:
        stats = decode(model, prompt, GenerationParams(max_new_tokens=24)).stats
        new, passes = new + stats.new_tokens, passes + stats.backbone_passes
    return new / passes


def _cfg(**kw) -> CurriculumConfig:
    base = {"batch_size": 4, "learning_rate": 5e-3, "max_length": 32, "progress": False, "device": "cpu"}
    return CurriculumConfig(**{**base, **kw})


def test_bad_jsonl_lines_are_reported_with_their_line_numbers(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "a", "response": "b"}\n\nnot json\n{"question": "a"}\n[1, 2]\n'
                    '{"question": "q", "response": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    for line in ("data.jsonl:3: not valid JSON", "data.jsonl:4: missing or non-string 'response'",
                 "data.jsonl:5: expected a JSON object", "data.jsonl:6:"):
        assert line in message
    assert "data.jsonl:1" not in message
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "a", "response": "b"}\n\n{"question": "c", "response": "d"}\n')
    assert [(e.question, e.line) for e in read_jsonl(good)] == [("a", 1), ("c", 3)]
    with pytest.raises(DataError, match="no such data file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_self_distillation_raises_accepted_tokens_per_pass_and_decoding_stays_exact(make_model, tmp_path):
    """Stage 2 trains the heads on the backbone's own greedy continuations (what verification accepts):
    accepted tokens per pass rise well above the untrained heads', and the output is still the backbone's."""
    model = make_model("llama", num_heads=3, k_max=3, untie_heads=True)
    before = _tokens_per_pass(model, QUESTIONS)
    examples = [Example(q, "return x + 1 " * 5, i + 1) for i, q in enumerate(QUESTIONS)]
    out = train_curriculum(model, examples, tmp_path / "run", _cfg(stage1_epochs=0, stage2_epochs=60,
                                                                    learning_rate=1e-2, self_distill="generate"))
    trained = load_multitoken(out["s2"], backbone=(model.backbone, model.tokenizer))
    after = _tokens_per_pass(trained, QUESTIONS)
    assert after > before + 0.4, (before, after)
    for q in QUESTIONS:
        assert decode(trained, q, GenerationParams(max_new_tokens=24)).token_ids == _reference(trained, q, 24)


def test_each_stage_checkpoint_reloads_alone_and_a_rerun_continues(make_model, load_tiny, tmp_path):
    model = make_model("gpt2", num_heads=3, k_max=2)
    out = tmp_path / "run"
    exported = train_curriculum(model, _examples(12), out, _cfg(stage1_epochs=2, stage2_epochs=1, ppo_steps=3),
                                val_examples=_examples(16)[12:])
    assert set(exported) == {"s1", "s2", "ppo_final"}
    for name in ("s1", "s2", "ppo_final"):
        directory = out / name
        assert {"moe_meta.json", "heads.safetensors", "router.safetensors", "tokenizer.json"} <= {
            p.name for p in directory.iterdir()}
        loaded = load_multitoken(directory)  # resolves the backbone from the recorded spec alone
        saved = {**load_file(str(directory / "heads.safetensors")), **load_file(str(directory / "router.safetensors"))}
        for key, value in loaded.heads.state_dict().items():
            assert torch.equal(value, saved[key]), (name, key)
        assert loaded.meta["stage"] == name and loaded.meta["backbone"]["fingerprint"]
        result = decode(loaded, "def f(x):", GenerationParams(max_new_tokens=12))
        assert result.token_ids == _reference(loaded, "def f(x):", 12)
    s1 = load_file(str(out / "s1" / "heads.safetensors"))
    s2 = load_file(str(out / "s2" / "heads.safetensors"))
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)  # stage 2 trained on from stage 1

    # the heads refuse a backbone they were not trained on
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_multitoken(out / "s2", backbone=load_tiny("llama"))

    # a rerun skips finished stages; with stage 2 removed and longer, it continues from its last step
    import shutil

    steps_before = load_multitoken(out / "s2").meta["metrics"]["steps"]
    shutil.rmtree(out / "s2")
    shutil.rmtree(out / "ppo_final")
    again = make_model("gpt2", num_heads=3, k_max=2)
    train_curriculum(again, _examples(12), out, _cfg(stage1_epochs=2, stage2_epochs=2))
    meta = load_multitoken(out / "s2").meta
    assert meta["metrics"]["steps"] == 2 * steps_before


class _Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way up catches it and saves state."""


def test_resume_after_a_kill_matches_the_uninterrupted_run(make_model, tmp_path, monkeypatch):
    """Die in the middle of stage 2 (after a step checkpoint, before the next); running the same command
    again resumes from the newest step checkpoint and ends with the same weights as an uninterrupted run."""
    from mot.multitoken import MultiTokenTask

    cfg = _cfg(stage1_epochs=2, stage2_epochs=2, save_every=2, keep_last=None)
    train_curriculum(make_model("gpt2", num_heads=3, k_max=2), _examples(8), tmp_path / "whole", cfg)

    original, calls = MultiTokenTask.loss, {"n": 0}

    def dying_loss(self, batch):
        if self.stage == 2 and self.module.training:
            calls["n"] += 1
            if calls["n"] == 3:  # stage 2 has saved step 2 and is in step 3 of 4
                raise _Killed
        return original(self, batch)

    monkeypatch.setattr(MultiTokenTask, "loss", dying_loss)
    with pytest.raises(_Killed):
        train_curriculum(make_model("gpt2", num_heads=3, k_max=2), _examples(8), tmp_path / "killed", cfg)
    monkeypatch.setattr(MultiTokenTask, "loss", original)
    killed = tmp_path / "killed"
    assert (killed / "s1").is_dir() and not (killed / "s2").exists()
    assert (killed / "stage2" / "step-000002").is_dir() and not (killed / "stage2" / "step-000004").exists()

    train_curriculum(make_model("gpt2", num_heads=3, k_max=2), _examples(8), killed, cfg)
    for name in ("s1", "s2"):
        for file in ("heads.safetensors", "router.safetensors"):
            whole = load_file(str(tmp_path / "whole" / name / file))
            resumed = load_file(str(killed / name / file))
            for key in whole:
                torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6)
