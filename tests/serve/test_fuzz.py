"""schemathesis against the app's own OpenAPI schema, and hypothesis over text schemathesis leaves out (lone
surrogates): whatever the request, never a 5xx."""

from __future__ import annotations

import json

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from mot.serve import ModelRegistry, create_app


@pytest.fixture(scope="module")
def api_schema(tiny_hf):
    registry = ModelRegistry()
    registry.register("tiny", tiny_hf)
    app = create_app(registry, api_key=None, default_max_tokens=4, max_tokens_limit=16)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_request_makes_the_server_fail(api_schema):
    # schemathesis' pytest plugin does not support this pytest; drive its strategies with hypothesis.
    statuses: list[tuple[str, int]] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # Most generated bodies name the served model, so generation itself is fuzzed too
            # (sampling params, stop strings, unicode prompts), not only the "unknown model" branch.
            if isinstance(case.body, dict) and "model" in case.body and len(repr(case.body)) % 3:
                case.body["model"] = "tiny"
            response = case.call()
            statuses.append((case.operation.path, response.status_code))
            assert response.status_code < 500, f"{case.operation.path}: {response.status_code} {response.text[:300]}"
            case.validate_response(response, checks=[not_a_server_error])

        check()
    generated = [path for path, status in statuses if status == 200 and path.endswith("completions")]
    assert generated, "no fuzzed request reached generation"


def _text():
    # Half of it with lone surrogates: JSON can spell them ("\ud800"), UTF-8 cannot encode them, and text()
    # (so schemathesis) never draws them.
    with_surrogates = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), min_size=1, max_size=6)
    return st.one_of(st.text(max_size=6), with_surrogates.map("".join))


def _value():
    return st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 40), _text()),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(_text(), inner, max_size=3)), max_leaves=6)


def test_no_text_makes_the_server_fail(tiny_hf):
    """Bodies with any text where text goes (and anything where anything goes), posted as the JSON
    escapes a client sends: a 200 or a 4xx with OpenAI's error body, never a 5xx."""
    registry = ModelRegistry()
    registry.register("tiny", tiny_hf)
    client = TestClient(create_app(registry, default_max_tokens=4, max_tokens_limit=16),
                        raise_server_exceptions=False)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                     "content": st.one_of(_text(), st.lists(st.fixed_dictionaries(
                                         {"type": st.just("text"), "text": _text()}), max_size=2))})
    common = {"model": st.one_of(st.just("tiny"), _text()), "max_tokens": st.integers(0, 4),
              "temperature": st.just(0), "stream": st.booleans()}
    optional = {"stop": st.one_of(_text(), st.lists(_text(), max_size=2)), "user": _text(), "extra": _value()}
    bodies = st.one_of(
        st.tuples(st.just("/v1/completions"), st.fixed_dictionaries(
            {**common, "prompt": st.one_of(_text(), st.lists(_text(), min_size=1, max_size=1))}, optional=optional)),
        st.tuples(st.just("/v1/chat/completions"), st.fixed_dictionaries(
            {**common, "messages": st.lists(message, min_size=1, max_size=2)}, optional=optional)))
    seen: list[int] = []

    @given(case=bodies)
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        path, body = case
        response = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        seen.append(response.status_code)
        assert response.status_code < 500, f"{path} {body!r}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert response.json()["error"]["message"]

    check()
    assert 200 in seen and 400 in seen  # both branches were reached
