"""Router registry: build a router from a registered name or an import path given in a config.

``build_router("mlp", 384, 4, 2, num_layers=3)`` or
``build_router("my_pkg.routers:MyRouter", 384, 4, 2, temperature=0.5)``.  Any ``nn.Module``
built as ``Cls(input_dim, num_experts, top_k, **options)`` that returns a ``RoutingDecision``
plugs in; ``@register_router("name")`` makes it available by name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from mot.errors import UsageError
from mot.routing.decision import RoutingDecision

__all__ = ["ROUTERS", "build_router", "is_registered_router", "register_router", "resolve_router", "router_spec"]

ROUTERS: dict[str, type[nn.Module]] = {}

C = TypeVar("C", bound=type)


def register_router(name: str) -> Callable[[C], C]:
    """Class decorator: make a router class buildable by ``name`` (lowercase, no ``.`` or ``:``)."""
    if not name or name != name.strip().lower() or any(c in name for c in ".:- "):
        raise ValueError(f"router name must be lowercase without '.', ':', '-' or spaces, got {name!r}")

    def decorate(cls: C) -> C:
        existing = ROUTERS.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise ValueError(f"router name {name!r} is already registered to {_qualified_name(existing)}")
        ROUTERS[name] = cls
        return cls

    return decorate


def _qualified_name(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _unknown(spec: str) -> UsageError:
    names = ", ".join(repr(n) for n in sorted(ROUTERS))
    close = difflib.get_close_matches(spec.lower(), list(ROUTERS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(
        f"unknown router {spec!r}{hint}: registered routers are {names}; "
        "or give an import path 'package.module:ClassName' (or 'package.module.ClassName') to a router class"
    )


def is_registered_router(spec: Any) -> bool:
    """True when ``spec`` names a registered router: building it imports no code (an import path does)."""
    return isinstance(spec, str) and spec.strip().lower().replace("-", "_") in ROUTERS


def resolve_router(spec: str | type) -> Callable[..., nn.Module]:
    """The class (or factory) named by ``spec``: a registered name or an import path."""
    if not isinstance(spec, str):
        if callable(spec):
            return spec
        raise UsageError(f"router spec must be a name or an import path string, got {type(spec).__name__}")
    text = spec.strip()
    key = text.lower().replace("-", "_")
    if key in ROUTERS:
        return ROUTERS[key]
    if ":" in text:
        module_name, _, attr_path = text.partition(":")
    elif "." in text:
        module_name, _, attr_path = text.rpartition(".")
    else:
        raise _unknown(text)
    if not module_name or not attr_path:
        raise _unknown(text)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(
            f"router {text!r}: cannot import module {module_name!r} ({e}); "
            "check the path 'package.module:ClassName' and that the package is installed"
        ) from e
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise UsageError(f"router {text!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"router {text!r}: {attr_path!r} is not a class")
    return target


def build_router(spec: str | type, input_dim: int, num_experts: int, top_k: int, **options: Any) -> nn.Module:
    """Build ``spec(input_dim, num_experts, top_k, **options)`` and check that it is a router.

    ``spec`` is a registered name (see ``ROUTERS``), an import path ``package.module:ClassName``
    or ``package.module.ClassName``, or a class.  Errors a config can cause (unknown name or
    option, invalid value, a class that is not a router) raise ``UsageError`` naming the spec.

    The check runs one forward in eval mode on ``zeros(2, input_dim)`` (no grad, RNG state
    restored, training mode restored) and verifies that a ``RoutingDecision`` of the right shapes
    comes back; a router that cannot run on that probe fails here rather than mid-training.
    """
    factory = resolve_router(spec)
    label = spec if isinstance(spec, str) else _qualified_name(spec)
    _check_call(factory, label, input_dim, num_experts, top_k, options)
    try:
        router = factory(input_dim, num_experts, top_k, **options)
    except ValueError as e:
        raise UsageError(f"router {label!r}: {e}") from e
    _check_router(router, label, input_dim, num_experts, top_k)
    return router


_POSITIONAL = ("input_dim", "num_experts", "top_k")


def _accepted_options(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword options ``factory`` accepts, following ``**kwargs`` up the MRO; None if open-ended."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not isinstance(factory, type):
        params = list(inspect.signature(factory).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in kinds}
    names: set[str] = set()
    for klass in factory.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass in (nn.Module, object):
            return None
        params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        names |= {p.name for p in params if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def _check_call(
    factory: Callable[..., Any], label: str, input_dim: int, num_experts: int, top_k: int, options: dict
) -> None:
    """Reject unknown or duplicated options with one line listing the accepted ones."""
    try:
        signature = inspect.signature(factory)
        accepted = _accepted_options(factory)
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return
    accepted_list = ", ".join(sorted((accepted or set()) - set(_POSITIONAL))) or "(none)"
    duplicated = sorted(set(options) & set(_POSITIONAL))
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    problem = None
    if duplicated:
        problem = f"{', '.join(duplicated)} given as option(s); pass them as the positional arguments"
    elif unknown:
        problem = f"unknown option(s) {', '.join(repr(u) for u in unknown)}"
    else:
        try:
            signature.bind(input_dim, num_experts, top_k, **options)
        except TypeError as e:
            problem = str(e)
    if problem:
        raise UsageError(
            f"router {label!r}: {problem}; it is built as (input_dim, num_experts, top_k, **options)"
            f" and accepts the options: {accepted_list}"
        )


def _check_router(router: Any, label: str, input_dim: int, num_experts: int, top_k: int) -> None:
    if not isinstance(router, nn.Module):
        raise UsageError(f"router {label!r}: built a {type(router).__name__}, expected a torch.nn.Module")
    for name, expected in (("num_experts", num_experts), ("top_k", top_k)):
        if getattr(router, name, None) != expected:
            raise UsageError(
                f"router {label!r}: attribute {name} is {getattr(router, name, None)!r}, expected {expected}"
            )
    first = next(router.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = router.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            router.eval()
            out = router(torch.zeros(2, input_dim, device=device, dtype=dtype))
    except Exception as e:
        raise UsageError(f"router {label!r}: fails on a probe input of shape [2, {input_dim}]: {e}") from e
    finally:
        router.train(was_training)
    if not isinstance(out, RoutingDecision):
        raise UsageError(
            f"router {label!r}: returned {type(out).__name__}, expected mot.routing.RoutingDecision"
            " (mot.routing.top_k_decision(logits, top_k) builds one from [B, E] logits)"
        )
    shapes = {
        "logits": (2, num_experts),
        "probs": (2, num_experts),
        "indices": (2, top_k),
        "weights": (2, top_k),
    }
    for field, shape in shapes.items():
        got = tuple(getattr(out, field).shape)
        if got != shape:
            raise UsageError(
                f"router {label!r}: decision.{field} has shape {list(got)}, expected {list(shape)}"
            )


def router_spec(router: nn.Module | type) -> str:
    """The spec that rebuilds ``router``'s class: its registered name, else its import path."""
    cls = router if isinstance(router, type) else type(router)
    for name, registered in ROUTERS.items():
        if registered is cls:
            return name
    return _qualified_name(cls)
