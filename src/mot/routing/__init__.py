"""Routing core shared by every model kind: decision, router protocol, built-in routers, registry, losses."""

from mot.routing.baselines import ClusterRouter, FixedRouter, RouterDC
from mot.routing.decision import RoutingDecision
from mot.routing.losses import budget_loss, entropy_loss, load_balancing_loss, router_z_loss, symmetric_kl
from mot.routing.registry import ROUTERS, build_router, register_router, resolve_router, router_spec
from mot.routing.routers import (
    GumbelTopKRouter,
    LinearRouter,
    MLPRouter,
    NoisyTopKRouter,
    Router,
    TopKRouter,
    top_k_decision,
)

__all__ = [
    "ROUTERS",
    "ClusterRouter",
    "FixedRouter",
    "RouterDC",
    "GumbelTopKRouter",
    "LinearRouter",
    "MLPRouter",
    "NoisyTopKRouter",
    "Router",
    "RoutingDecision",
    "TopKRouter",
    "budget_loss",
    "build_router",
    "entropy_loss",
    "load_balancing_loss",
    "register_router",
    "resolve_router",
    "router_spec",
    "router_z_loss",
    "symmetric_kl",
    "top_k_decision",
]
