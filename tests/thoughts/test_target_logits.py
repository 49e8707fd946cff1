"""``forward(..., target_logits_only=True)``: the LM head runs only where a completion token is predicted,
and the loss, the consistency term and the gradients are those of the full logits."""

from __future__ import annotations

import torch

from mot.thoughts import lm_loss
from mot.thoughts.training import consistency_loss

from .helpers import fixed_routing

PROMPTS = ["# add two numbers\n", "# a longer prompt about greeting people politely\n"]
TARGETS = ["def add(a, b):\n    return a + b\n", "print('hi')\n"]


def test_target_logits_only_gives_the_same_loss_gradients_and_consistency(make_mot):
    mot = make_mot(randomise=True, gate=0.5, top_k=2)
    routing = fixed_routing([[1, 0], [1, 2]], [[0.6, 0.4], [0.7, 0.3]])
    other = fixed_routing([[1, 2], [1, 0]], [[0.5, 0.5], [0.8, 0.2]])
    results = []
    for only in (False, True):
        mot.zero_grad()
        out = mot(PROMPTS, TARGETS, routing=routing, target_logits_only=only)
        second = mot(PROMPTS, TARGETS, routing=other, target_logits_only=only)
        loss = lm_loss(out)
        kl, agree = consistency_loss(out, second)
        (loss + kl).backward()
        grads = [p.grad.clone() if p.grad is not None else None for p in mot.trainable_parameters()]
        results.append((out, float(loss.detach()), float(kl.detach()), agree, grads))
    (full, l0, k0, a0, g0), (cut, l1, k1, a1, g1) = results
    assert abs(l0 - l1) < 1e-6 and abs(k0 - k1) < 1e-6 and a0 == a1 == 1.0 and k0 > 0
    for a, b in zip(g0, g1, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # fewer rows were computed, and the kept ones are the full logits' last rows
    assert full.logits_start == [] and len(cut.logits_start) == 2
    for b in range(2):
        n = cut.logits[b].shape[0]
        assert n < full.logits[b].shape[0] and cut.logits_start[b] == full.logits[b].shape[0] - n
        assert cut.logits_start[b] <= full.tokens[b].num_prompt_tokens - 1
        torch.testing.assert_close(cut.logits[b], full.logits[b][-n:], atol=1e-5, rtol=1e-5)
