"""``mot serve``: options reach the app, loopback by default, a warning when exposed without a key."""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

from mot.cli import serve_cmd
from mot.errors import UsageError


def defaults() -> dict:
    return {name: p.default.default for name, p in inspect.signature(serve_cmd.serve).parameters.items()}


def test_serve_binds_loopback_by_default_and_wires_the_options(tiny_experts, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv("MOT_API_KEY", raising=False)
    options = {**defaults(), "model": [f"tiny={tiny_experts['gpt2'].path}"], "api_key": "k", "max_queue": 3}
    serve_cmd.serve(**options)
    app, kwargs = calls[0]
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", 8000)
    assert app.state.admission.max_concurrency == 4 and app.state.admission.max_queue == 3
    client = TestClient(app)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).json()["data"][0]["id"] == "tiny"
    err = capsys.readouterr().err
    assert "without --api-key" not in err  # loopback: no exposure warning
    assert "--api-key puts the key in this process's command line" in err  # but the key itself is exposed

    serve_cmd.serve(**{**options, "host": "0.0.0.0", "api_key": None})
    assert "without --api-key" in capsys.readouterr().err
    with pytest.raises(UsageError, match="empty"):
        serve_cmd.serve(**{**options, "api_key": " "})
