"""Issue 18 (19): stage-1 validation reports the loss it computes, never a 0 that nothing was scored for."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mot.multitoken import Example, MultiTokenTask
from mot.multitoken.data import SequenceDataset, collate_sequences, read_tokens, step_targets


def _batch(model, n: int = 4):
    words = ["alpha", "beta", "gamma", "delta"]
    examples = [Example(f"q{i}: ", " ".join(words[(j + i) % 4] for j in range(8)), i + 1) for i in range(n)]
    data = SequenceDataset(examples, model.tokenizer, 32, None)
    return collate_sequences([data[i] for i in range(n)], model.tokenizer.pad_token_id or 0)


def _teacher_forced_ce(model, batch) -> float:
    """The oracle: CE of every head on the data's own next tokens, from the backbone and heads directly."""
    heads = model.heads
    ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    hidden, _, _ = model.backbone_step(ids, attention_mask=attention, use_cache=False)
    step_mask, labels = step_targets(ids, response, heads.num_heads)
    hidden, labels = hidden[step_mask].to(heads.lm_weight.dtype), labels[step_mask]
    total, count = 0.0, 0
    for head in range(1, heads.num_heads):
        valid = labels[:, head] >= 0
        logits = heads.head_logits(hidden[valid], head, read_tokens(labels)[valid])
        total += F.cross_entropy(logits, labels[valid, head], reduction="sum").item()
        count += int(valid.sum())
    return total / count


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stage1_validation_reports_the_teacher_forced_loss(make_model, family):
    model = make_model(family, num_heads=3, k_max=2)
    task = MultiTokenTask(model, 1)
    batch = _batch(model)
    model.heads.eval()
    with torch.no_grad():
        metrics = task.evaluate([batch])
        expected = _teacher_forced_ce(model, batch)
    assert expected > 1.0  # untrained heads: far from 0
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_validation_with_nothing_to_score_is_nan_not_zero(make_model, monkeypatch):
    model = make_model("llama", num_heads=3, k_max=2)
    task = MultiTokenTask(model, 2)
    batch = _batch(model)
    # no target in the heads' vocabulary: no loss can be computed, so none may be reported as 0
    monkeypatch.setattr(type(model.heads), "vocab_rows", lambda self, labels: torch.full_like(labels, -1))
    with torch.no_grad():
        metrics = task.evaluate([batch])
    assert math.isnan(metrics["val_loss"])


def test_stage1_validation_of_a_draft_layer_is_a_real_loss(make_model):
    model = make_model("llama", num_heads=3, k_max=2, head_type="layer")
    task = MultiTokenTask(model, 1)
    model.heads.eval()
    with torch.no_grad():
        metrics = task.evaluate([_batch(model)])
        _, train_metrics = task.loss(_batch(model))
    # stage 1 trains on the data's targets; its validation scores the same ones (one batch, all heads)
    per_head = [train_metrics[f"ce/head_{h}"] for h in (1, 2)]
    counts = [train_metrics[f"targets/head_{h}"] for h in (1, 2)]
    expected = sum(c * n for c, n in zip(per_head, counts, strict=True)) / sum(counts)
    assert metrics["val_loss"] > 1.0
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
