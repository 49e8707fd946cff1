"""mot.experts.skinny: the few-row linear path equals nn.Linear to rounding, and only where it is asked for."""

from __future__ import annotations

import threading

import torch
from torch import nn

from mot.experts import skinny


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8, bias=False))


def test_installed_linears_match_nn_linear_inside_and_are_untouched_outside():
    model, reference = _model(), _model()
    assert skinny.install(model) == 2
    assert skinny.install(model) == 2  # idempotent
    for shape in [(1, 16), (3, 16), (1, 5, 16), (2, 3, 16)]:
        x = torch.randn(shape)
        expected = reference(x)
        assert torch.equal(model(x), expected)  # outside the context: nn.Linear exactly
        with skinny.skinny_rows():
            out = model(x)
        assert out.shape == expected.shape and out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_wide_inputs_and_disabled_context_keep_pytorch_path(monkeypatch):
    model = _model()
    skinny.install(model)
    calls = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(skinny.F, "linear", lambda *a, **k: calls.append(1) or real_linear(*a, **k))
    with skinny.skinny_rows():
        model(torch.randn(skinny.MAX_ROWS, 16))
        assert not calls  # few rows: the skinny product
        model(torch.randn(skinny.MAX_ROWS + 1, 16))
        assert len(calls) == 2  # both layers
    with skinny.skinny_rows(False):
        model(torch.randn(2, 16))
    assert len(calls) == 4


def test_the_switch_is_per_thread_and_gradients_flow():
    model = _model()
    skinny.install(model)
    seen = {}

    def other():
        seen["active"] = skinny.active()

    with skinny.skinny_rows():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        x = torch.randn(3, 16, requires_grad=True)
        model(x).sum().backward()
    assert seen["active"] is False
    assert x.grad is not None and model[0].weight.grad is not None


def test_subclasses_are_left_alone():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(Custom(4, 4), nn.Linear(4, 4))
    assert skinny.install(model) == 1
    assert "forward" not in model[0].__dict__
