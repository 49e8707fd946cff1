"""Built-in routers and the shared top-k rule."""

from __future__ import annotations

import math

import pytest
import torch

from mot.routing import (
    ROUTERS,
    GumbelTopKRouter,
    LinearRouter,
    MLPRouter,
    NoisyTopKRouter,
    Router,
    RoutingDecision,
    top_k_decision,
)

# the routers trained by gradient through a task loss; the baseline routers of mot.routing.baselines learn
# with fit(features, correctness) instead (tests/routing/test_baseline_routers.py)
NAMES = sorted(n for n in ROUTERS if not hasattr(ROUTERS[n], "fit"))


def _make(name: str, input_dim: int = 6, num_experts: int = 4, top_k: int = 2, **options):
    torch.manual_seed(0)
    return ROUTERS[name](input_dim, num_experts, top_k, **options)


def _assert_well_formed(decision: RoutingDecision, num_experts: int, top_k: int) -> None:
    batch = decision.logits.shape[0]
    assert decision.probs.shape == (batch, num_experts)
    assert decision.indices.shape == decision.weights.shape == (batch, top_k)
    torch.testing.assert_close(decision.probs.sum(-1), torch.ones(batch))
    torch.testing.assert_close(decision.weights.sum(-1), torch.ones(batch))
    assert (decision.weights[:, :-1] >= decision.weights[:, 1:]).all()  # sorted by weight, descending
    assert torch.equal(decision.primary, decision.indices[:, 0])
    # each row chooses distinct experts, and the kept ones are the most probable
    assert all(len(set(row.tolist())) == top_k for row in decision.indices)
    kept = decision.probs.gather(-1, decision.indices)
    torch.testing.assert_close(kept, decision.probs.topk(top_k, -1).values)


# ---------------------------------------------------------------- the shared top-k rule


def test_top_k_decision_renormalises_the_kept_probabilities():
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    decision = top_k_decision(logits, 2)
    assert decision.indices.tolist() == [[3, 2]]
    torch.testing.assert_close(decision.weights, torch.tensor([[0.4 / 0.7, 0.3 / 0.7]]))
    torch.testing.assert_close(decision.probs, torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    torch.testing.assert_close(decision.dense_weights(), torch.tensor([[0.0, 0.0, 0.3 / 0.7, 0.4 / 0.7]]))


def test_straight_through_keeps_the_value_and_takes_the_gradient_of_the_kept_probabilities():
    logits = torch.tensor([[0.3, -0.2, 1.0, 0.5]], requires_grad=True)
    plain = top_k_decision(logits, 1)
    st = top_k_decision(logits, 1, straight_through=True)
    assert plain.weights.item() == st.weights.item() == 1.0
    (g_plain,) = torch.autograd.grad(plain.weights.sum(), logits, allow_unused=True)
    (g_st,) = torch.autograd.grad(st.weights.sum(), logits)
    assert g_plain is None or (g_plain == 0).all()  # renormalised top-1 is the constant 1
    (g_prob,) = torch.autograd.grad(logits.softmax(-1)[0, 2], logits)
    torch.testing.assert_close(g_st, g_prob)


@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (5, 1), (5, 3), (5, 5)])
def test_top_k_decision_edge_cases(num_experts, top_k):
    torch.manual_seed(1)
    decision = top_k_decision(torch.randn(7, num_experts), top_k)
    _assert_well_formed(decision, num_experts, top_k)
    if top_k == num_experts:
        torch.testing.assert_close(decision.dense_weights(), decision.probs)


def test_top_k_decision_half_precision_logits():
    decision = top_k_decision(torch.randn(3, 4).bfloat16(), 2)
    assert decision.probs.dtype == decision.weights.dtype == torch.bfloat16
    assert decision.weights.float().sum(-1).sub(1).abs().max() < 1e-2


# ---------------------------------------------------------------- every built-in router


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (4, 1), (4, 2), (4, 4)])
def test_router_decisions_are_well_formed(name, num_experts, top_k):
    router = _make(name, num_experts=num_experts, top_k=top_k)
    assert isinstance(router, Router)
    assert (router.num_experts, router.top_k) == (num_experts, top_k)
    for training in (True, False):
        router.train(training)
        _assert_well_formed(router(torch.randn(9, 6)), num_experts, top_k)


@pytest.mark.parametrize("name", NAMES)
def test_router_routes_many_tokens(name):
    router = _make(name, input_dim=16, num_experts=8, top_k=2)
    decision = router(torch.randn(4096, 16))
    assert decision.indices.shape == (4096, 2)
    assert torch.bincount(decision.primary, minlength=8).shape == (8,)


@pytest.mark.parametrize("name", NAMES)
def test_router_is_deterministic_in_eval_mode(name):
    router = _make(name, jitter_noise=0.1).eval()
    x = torch.randn(5, 6)
    first, second = router(x), router(x)
    for field in ("logits", "probs", "indices", "weights", "primary"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


@pytest.mark.parametrize(
    "name,top_k,options",
    [(n, 2, {}) for n in NAMES] + [("gumbel_topk", 1, {}), ("noisy_topk", 1, {"straight_through": True})],
)
def test_task_loss_on_weights_reaches_every_router_parameter(name, top_k, options):
    router = _make(name, top_k=top_k, **options).train()
    x = torch.randn(8, 6)
    expert_outputs = torch.randn(8, router.num_experts)
    decision = router(x)
    task_loss = (decision.weights * expert_outputs.gather(1, decision.indices)).sum()
    task_loss.backward()
    for pname, param in router.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


def test_top1_without_straight_through_gives_the_router_no_task_gradient():
    router = _make("linear", top_k=1)
    router(torch.randn(8, 6)).weights.sum().backward()
    assert router.gate.weight.grad is None or (router.gate.weight.grad == 0).all()


# ---------------------------------------------------------------- router-specific behaviour


def test_noisy_topk_adds_noise_only_in_training():
    router = _make("noisy_topk", num_experts=8)
    x = torch.randn(64, 6)
    clean = router.gate(x)
    torch.testing.assert_close(router.eval()(x).logits, clean)
    noisy = router.train()(x).logits
    # W_noise starts at zero: noise std = softplus(0) + noise_epsilon
    assert (noisy - clean).std().item() == pytest.approx(math.log(2) + 1e-2, rel=0.15)


def test_noisy_topk_with_zero_noise_std_is_clean_in_training():
    router = _make("noisy_topk", noise_std=0.0).train()
    x = torch.randn(4, 6)
    torch.testing.assert_close(router(x).logits, router.gate(x))
    assert router.noise is None  # no parameter left without gradient (DDP)


def test_gumbel_noise_changes_the_choice_in_training_only():
    router = _make("gumbel_topk", num_experts=8, top_k=2, tau=0.5)
    x = torch.randn(32, 6)
    chosen_eval = router.eval()(x).indices
    torch.testing.assert_close(router(x).logits, router.gate(x) / 0.5)
    torch.manual_seed(123)
    chosen_train = router.train()(x).indices
    assert (chosen_train != chosen_eval).any(dim=-1).sum() > 0
    # training decisions are random, eval ones are not
    torch.manual_seed(124)
    assert not torch.equal(router(x).indices, chosen_train)


def test_gumbel_top1_weights_are_hard_in_the_forward_pass():
    router = _make("gumbel_topk", top_k=1).train()
    assert torch.equal(router(torch.randn(5, 6)).weights, torch.ones(5, 1))


def test_gumbel_probs_are_the_tempered_softmax_of_the_decision_logits():
    router = _make("gumbel_topk", tau=0.3).train()
    decision = router(torch.randn(5, 6))
    torch.testing.assert_close(decision.probs, decision.logits.softmax(-1))


def test_mlp_router_depth_counts_the_output_layer():
    linears = lambda r: [m for m in r.modules() if isinstance(m, torch.nn.Linear)]  # noqa: E731
    three = MLPRouter(6, 4, 2, hidden_dim=10, num_layers=3)
    assert [(m.in_features, m.out_features) for m in linears(three)] == [(6, 10), (10, 10), (10, 4)]
    assert len(linears(MLPRouter(6, 4, 2, num_layers=1))) == 1
    assert any(isinstance(m, torch.nn.GELU) for m in three.modules())


def test_mlp_router_dropout_is_active_in_training_only():
    router = _make("mlp", hidden_dim=32, dropout=0.5)
    x = torch.randn(4, 6)
    router.train()
    assert not torch.equal(router(x).logits, router(x).logits)
    router.eval()
    assert torch.equal(router(x).logits, router(x).logits)


def test_jitter_noise_perturbs_inputs_in_training_only():
    router = _make("linear", jitter_noise=0.2)
    x = torch.randn(4, 6)
    clean = router.gate(x)
    assert not torch.allclose(router.train()(x).logits, clean)
    torch.testing.assert_close(router.eval()(x).logits, clean)


@pytest.mark.parametrize(
    "cls,args,options,message",
    [
        (LinearRouter, (6, 4, 0), {}, r"top_k must be an integer between 1 and num_experts \(4\), got 0"),
        (LinearRouter, (6, 4, 5), {}, r"top_k must be an integer between 1 and num_experts \(4\), got 5"),
        (LinearRouter, (6, 0, 1), {}, r"num_experts must be an integer >= 1, got 0"),
        (LinearRouter, (0, 4, 1), {}, r"input_dim must be an integer >= 1, got 0"),
        (LinearRouter, (6, 4, 2.0), {}, r"top_k must be an integer"),
        (MLPRouter, (6, 4, 2), {"num_layers": 0}, r"num_layers must be an integer >= 1"),
        (MLPRouter, (6, 4, 2), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        (NoisyTopKRouter, (6, 4, 2), {"noise_std": -1.0}, r"noise_std must be a number >= 0"),
        (GumbelTopKRouter, (6, 4, 2), {"tau": 0.0}, r"tau must be a finite number > 0"),
        (LinearRouter, (6, 4, 2), {"jitter_noise": -0.1}, r"jitter_noise must be a number in \[0, 1\)"),
    ],
)
def test_invalid_arguments_raise_a_clear_value_error(cls, args, options, message):
    with pytest.raises(ValueError, match=f"{cls.__name__}: {message}"):
        cls(*args, **options)


def test_features_of_the_wrong_shape_are_rejected():
    router = LinearRouter(6, 4, 2)
    with pytest.raises(ValueError, match=r"expected features \[B, 6\], got shape \(2, 3, 6\)"):
        router(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match=r"expected features \[B, 6\], got shape \(2, 5\)"):
        router(torch.randn(2, 5))
