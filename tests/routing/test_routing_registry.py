"""Router registry: names, import paths and the errors a config can cause."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mot.errors import UsageError
from mot.routing import (
    ROUTERS,
    ClusterRouter,
    FixedRouter,
    GumbelTopKRouter,
    LinearRouter,
    MLPRouter,
    NoisyTopKRouter,
    RouterDC,
    RoutingDecision,
    build_router,
    register_router,
    router_spec,
    top_k_decision,
)
from tests.routing.plugin_routers import CosineRouter


def test_builtin_routers_are_registered_by_name():
    assert ROUTERS == {
        "linear": LinearRouter,
        "mlp": MLPRouter,
        "noisy_topk": NoisyTopKRouter,
        "gumbel_topk": GumbelTopKRouter,
        "fixed": FixedRouter,
        "cluster": ClusterRouter,
        "routerdc": RouterDC,
    }


def test_build_by_name_passes_options():
    router = build_router("mlp", 8, 4, 2, hidden_dim=16, num_layers=3, dropout=0.1)
    assert isinstance(router, MLPRouter) and (router.num_experts, router.top_k) == (4, 2)
    assert sum(isinstance(m, nn.Linear) for m in router.modules()) == 3
    assert build_router("Gumbel-TopK", 8, 4, 1, tau=0.5).tau == 0.5  # names forgive case and dashes


@pytest.mark.parametrize("spec", ["mot.routing.routers:LinearRouter", "mot.routing.routers.LinearRouter"])
def test_build_by_import_path(spec):
    router = build_router(spec, 8, 4, 2, bias=True)
    assert type(router) is LinearRouter and router.gate.bias is not None


def test_build_third_party_router_by_import_path():
    router = build_router("tests.routing.plugin_routers:CosineRouter", 8, 5, 3, temperature=0.2)
    assert isinstance(router, CosineRouter) and router.temperature == 0.2
    decision = router(torch.randn(4, 8))
    assert isinstance(decision, RoutingDecision) and decision.indices.shape == (4, 3)
    assert router_spec(router) == "tests.routing.plugin_routers:CosineRouter"
    assert type(build_router(router_spec(router), 8, 5, 3)) is CosineRouter


def test_router_spec_of_a_builtin_is_its_name():
    assert router_spec(build_router("noisy_topk", 8, 4, 2)) == "noisy_topk"
    assert router_spec(GumbelTopKRouter) == "gumbel_topk"


def test_unknown_name_lists_registered_routers_and_the_import_form():
    with pytest.raises(UsageError) as info:
        build_router("mlpp", 8, 4, 2)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown router 'mlpp' (did you mean 'mlp'?)")
    for name in ("'gumbel_topk'", "'linear'", "'mlp'", "'noisy_topk'", "'package.module:ClassName'"):
        assert name in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_pkg.routers:Router", r"cannot import module 'no_such_pkg.routers'"),
        ("mot.routing.routers:NoSuchRouter", r"module 'mot.routing.routers' has no attribute 'NoSuchRouter'"),
        (
            "tests.routing.plugin_routers:TensorRouter",
            r"returned Tensor, expected mot.routing.RoutingDecision",
        ),
        ("torch.nn:Linear", r"attribute num_experts is None, expected 4"),
    ],
)
def test_bad_import_paths_raise_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        build_router(spec, 8, 4, 2)


def test_unknown_option_lists_accepted_options():
    with pytest.raises(UsageError) as info:
        build_router("gumbel_topk", 8, 4, 2, temprature=0.5)
    assert str(info.value) == (
        "router 'gumbel_topk': unknown option(s) 'temprature'; it is built as (input_dim, num_experts, top_k, **options)"
        " and accepts the options: bias, dropout, hidden_dim, jitter_noise, num_layers, straight_through, tau"
    )


def test_invalid_value_becomes_a_usage_error_naming_the_spec():
    with pytest.raises(
        UsageError,
        match=r"router 'linear': LinearRouter: top_k must be an integer between 1 and num_experts \(4\), got 5",
    ):
        build_router("linear", 8, 4, 5)


def test_register_router_makes_a_custom_class_buildable_by_name():
    class HalfRouter(nn.Module):
        def __init__(self, input_dim: int, num_experts: int, top_k: int) -> None:
            super().__init__()
            self.num_experts, self.top_k = num_experts, top_k
            self.gate = nn.Linear(input_dim, num_experts)

        def forward(self, features: torch.Tensor) -> RoutingDecision:
            return top_k_decision(self.gate(features) / 2, self.top_k)

    try:
        assert register_router("half_test")(HalfRouter) is HalfRouter
        router = build_router("half_test", 8, 4, 2)
        assert isinstance(router, HalfRouter) and router_spec(router) == "half_test"
        with pytest.raises(ValueError, match="already registered"):
            register_router("half_test")(CosineRouter)
    finally:
        ROUTERS.pop("half_test", None)


def test_register_router_rejects_names_that_look_like_paths():
    with pytest.raises(ValueError, match="router name must be lowercase"):
        register_router("my.router")


def test_build_router_leaves_rng_and_training_mode_untouched():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    router = build_router("tests.routing.plugin_routers:RandomRouter", 8, 4, 2)
    assert torch.equal(torch.rand(3), expected)
    assert router.training
