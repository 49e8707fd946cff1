from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from mot.moellama import model as ml
from tests.moellama.conftest import tiny_config, tiny_model


@pytest.mark.parametrize("shared", [False, True])
def test_changing_a_future_token_never_changes_past_logits(shared):
    m = tiny_model(shared_expert=shared)
    x = torch.randint(0, 96, (2, 20))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 7) % 96
    with torch.no_grad():
        a, b = m(x).logits, m(y).logits
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_cached_forward_equals_uncached_forward():
    m = tiny_model(shared_expert=True)
    x = torch.randint(0, 96, (2, 24))
    cache = ml.KVCache()
    with torch.no_grad():
        full = m(x).logits
        pieces = [m(x[:, :10], cache=cache).logits, m(x[:, 10:17], cache=cache).logits]
        pieces += [m(x[:, t:t + 1], cache=cache).logits for t in range(17, 24)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)
    assert cache.get_seq_length() == 24


def test_cached_generation_equals_recomputing_from_scratch():
    from mot.moellama.generate import sample_tokens

    m = tiny_model(seed=3)
    prompt = torch.randint(0, 96, (1, 7))
    cached = torch.stack(list(sample_tokens(m, prompt, 15)), 1)
    seq = prompt
    with torch.no_grad():
        for _ in range(15):
            logits = m(seq).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq[:, 7:])


def test_left_padded_batch_generates_like_each_row_alone():
    from mot.moellama.generate import sample_tokens

    m = tiny_model(seed=4)
    a, b = torch.randint(3, 96, (9,)), torch.randint(3, 96, (5,))
    batch = torch.stack([a, torch.cat([torch.zeros(4, dtype=torch.long), b])])
    mask = torch.stack([torch.ones(9, dtype=torch.long), torch.tensor([0] * 4 + [1] * 5)])
    together = torch.stack(list(sample_tokens(m, batch, 10, attention_mask=mask)), 1)
    alone_a = torch.stack(list(sample_tokens(m, a[None], 10)), 1)
    alone_b = torch.stack(list(sample_tokens(m, b[None], 10)), 1)
    assert torch.equal(together, torch.cat([alone_a, alone_b]))


def test_routing_weights_sum_to_one_and_follow_the_softmax():
    m = tiny_model()
    x = torch.randint(0, 96, (3, 11))
    with torch.no_grad():
        out = m(x)
    for d in out.decisions:
        assert d.indices.shape == (33, 2)
        torch.testing.assert_close(d.weights.sum(-1), torch.ones(33))
        chosen = d.probs.gather(-1, d.indices)
        torch.testing.assert_close(d.weights, chosen / chosen.sum(-1, keepdim=True))
        assert torch.equal(d.indices, d.probs.topk(2, dim=-1).indices)


def _hand_routed_moe():
    """A 4-expert top-2 MoE whose router logits are the inputs themselves (gate = identity)."""
    moe = ml.MoE(tiny_config(dim=4, num_heads=1, num_kv_heads=1, num_experts=4, top_k=2))
    with torch.no_grad():
        moe.router.gate.weight.copy_(torch.eye(4))
    log = math.log
    x = torch.tensor([[[log(4), log(2), 0.0, 0.0],   # probs .5 .25 .125 .125 -> experts 0, 1
                       [log(4), 0.0, log(2), 0.0],   # probs .5 .125 .25 .125 -> experts 0, 2
                       [0.0, 0.0, log(2), log(4)]]])  # padding: probs .125 .125 .25 .5 -> 3, 2
    return moe, x


def test_load_balancing_loss_on_a_hand_computed_case_excludes_padding():
    moe, x = _hand_routed_moe()
    _, decision = moe(x)
    assert decision.indices.tolist() == [[0, 1], [0, 2], [3, 2]]
    torch.testing.assert_close(decision.weights[0], torch.tensor([2 / 3, 1 / 3]))
    m = tiny_model(load_balancing_loss_coef=1.0, router_z_loss_coef=0.0)
    # real tokens: f = [2, 1, 1, 0] / 4, P = [.5, .1875, .1875, .125] -> 4 * (.25 + .046875 * 2) = 1.375
    loss = m.aux_loss([decision], torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(loss, torch.tensor(1.375))
    # all three: f = [2, 1, 2, 1] / 6, P = [3/8, 1/6, 5/24, 1/4]
    expected = 4 * (2 / 6 * 3 / 8 + 1 / 6 * 1 / 6 + 2 / 6 * 5 / 24 + 1 / 6 * 1 / 4)
    torch.testing.assert_close(m.aux_loss([decision], None), torch.tensor(expected))


def test_router_z_loss_is_the_mean_squared_logsumexp():
    moe, x = _hand_routed_moe()
    _, decision = moe(x)
    m = tiny_model(load_balancing_loss_coef=0.0, router_z_loss_coef=1.0)
    # logsumexp of log(probs * 8) = log 8 for every token
    torch.testing.assert_close(m.aux_loss([decision], None), torch.tensor(math.log(8) ** 2))


BACKENDS = ["sorted_mm", "loop"] + (["grouped_mm"] if hasattr(torch, "_grouped_mm") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_dispatch_equals_a_plain_loop_over_experts(monkeypatch, backend):
    monkeypatch.setattr(ml, "_experts_backend", lambda x: backend)
    torch.manual_seed(0)
    experts = ml.Experts(num_experts=6, dim=8, ffn_dim=12)
    torch.nn.init.normal_(experts.gate_up, std=0.3)
    torch.nn.init.normal_(experts.down, std=0.3)
    x = torch.randn(40, 8, requires_grad=True)
    indices = torch.stack([torch.randperm(5)[:2] for _ in range(40)])  # expert 5 never chosen
    weights = torch.rand(40, 2).softmax(-1)
    expected = torch.zeros(40, 8)
    for k in range(2):
        for n in range(40):
            e = indices[n, k]
            g, u = (x[n] @ experts.gate_up[e]).chunk(2)
            expected[n] += weights[n, k] * ((torch.nn.functional.silu(g) * u) @ experts.down[e])
    got = experts(x, indices, weights)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.backward(torch.randn_like(got))
    assert experts.gate_up.grad[5].abs().sum() == 0 and experts.gate_up.grad[:5].abs().sum() > 0
    assert experts.down.grad[5].abs().sum() == 0 and experts.down.grad[:5].abs().sum() > 0


def _loop_reference(x, gate_up, down, weights, indices):
    """sum_k weights[n, k] * SwiGLU_{indices[n, k]}(x[n]), one expert at a time, plain autograd."""
    out = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        rows, ks = (indices == e).nonzero(as_tuple=True)
        if len(rows):
            g, u = (x[rows] @ gate_up[e]).chunk(2, dim=-1)
            out = out.index_add(0, rows, weights[rows, ks, None] * ((torch.nn.functional.silu(g) * u) @ down[e]))
    return out


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_sorted_mm_outputs_and_gradients_equal_a_per_expert_loop_in_float64(top_k):
    torch.manual_seed(top_k)
    E, d, f, N = 5, 6, 7, 23
    x = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    gate_up = (0.4 * torch.randn(E, d, 2 * f, dtype=torch.float64)).requires_grad_()
    down = (0.4 * torch.randn(E, f, d, dtype=torch.float64)).requires_grad_()
    indices = torch.stack([torch.randperm(E - 1)[:top_k] + 1 for _ in range(N)])  # expert 0 gets no token
    assert not (indices == 0).any() and len(indices.unique()) == E - 1
    weights = torch.rand(N, top_k, dtype=torch.float64).requires_grad_()
    inputs = (x, gate_up, down, weights)
    got = ml.SortedExpertsMM.apply(*inputs, indices)
    expected = _loop_reference(*inputs, indices)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, inputs, grad)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    for name, a, b in zip(("x", "gate_up", "down", "weights"), got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"grad of {name}: {m}")
    assert got_grads[1][0].abs().sum() == 0 and got_grads[2][0].abs().sum() == 0  # the idle expert
    assert torch.autograd.gradcheck(lambda *t: ml.SortedExpertsMM.apply(*t, indices), inputs)


def test_sorted_mm_skips_gradients_nobody_asked_for():
    torch.manual_seed(0)
    experts = ml.Experts(num_experts=4, dim=8, ffn_dim=8)
    torch.nn.init.normal_(experts.gate_up, std=0.3)
    torch.nn.init.normal_(experts.down, std=0.3)
    experts.gate_up.requires_grad_(False)
    x = torch.randn(10, 8)  # no grad for x or the weights either
    indices = torch.randint(0, 4, (10, 2))
    ml.SortedExpertsMM.apply(x, experts.gate_up, experts.down, torch.rand(10, 2), indices).sum().backward()
    assert experts.gate_up.grad is None and experts.down.grad is not None


def test_router_noise_only_while_training():
    m = tiny_model(router_noise_std=1.0)
    x = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        assert torch.equal(m(x).logits, m(x).logits)
        m.train()
        a, b = m(x).decisions[0].logits, m(x).decisions[0].logits
    assert not torch.equal(a, b)


def test_training_loss_backpropagates_to_every_parameter_and_tied_embeddings():
    m = tiny_model(shared_expert=True).train()
    assert m.lm_head.weight is m.embed.weight
    x = torch.randint(0, 96, (2, 16))
    out = m(x[:, :-1], targets=x[:, 1:])
    assert out.loss > out.lm_loss > 0 and out.aux_loss > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed.weight


def test_residual_projections_get_the_depth_scaled_init():
    m = tiny_model(num_layers=8, dim=64, ffn_dim=256, init_std=0.02)
    block = m.layers[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.003
    assert abs(block.attn.out.weight.std().item() - 0.02 / 4) < 0.001
    assert abs(block.moe.experts.down.std().item() - 0.02 / 4) < 0.001


def test_active_parameters_count_top_k_experts():
    m = tiny_model()
    per_expert = 32 * 96 + 48 * 32
    assert m.num_parameters() - m.num_parameters(active=True) == 2 * 2 * per_expert


@pytest.mark.parametrize("bad", [dict(top_k=5), dict(dim=30), dict(num_kv_heads=3), dict(dropout=1.0)])
def test_config_rejects_inconsistent_shapes(bad):
    with pytest.raises(ValidationError):
        tiny_config(**bad)


def test_sequence_longer_than_max_seq_len_is_an_error():
    m = tiny_model(max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("masked", [False, True])
def test_aux_loss_over_all_layers_equals_the_per_layer_routing_losses(masked):
    m = tiny_model(num_layers=3, load_balancing_loss_coef=0.3, router_z_loss_coef=0.07, router_noise_std=0.5).train()
    x = torch.randint(0, 96, (2, 13))
    decisions = m(x).decisions
    mask = (torch.rand(2, 13) > 0.4).long() if masked else None
    flat = None if mask is None else mask.reshape(-1)
    expected = sum(0.3 * ml.load_balancing_loss(d.probs, d.indices, flat) + 0.07 * ml.router_z_loss(d.logits, flat)
                   for d in decisions)
    got = m.aux_loss(decisions, mask)
    torch.testing.assert_close(got, expected)
    params = [p for p in m.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(got, params, allow_unused=True, retain_graph=True),
                    torch.autograd.grad(expected, params, allow_unused=True), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
