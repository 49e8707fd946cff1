"""The HTTP API in process: formats, validation, auth, CORS, greedy decoding, usage and routing."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from mot.serve import ModelRegistry, create_app
from tests.serve.conftest import ScriptedGenerator


@pytest.fixture(scope="module")
def client(tiny_hf):
    registry = ModelRegistry()
    registry.register("tiny", tiny_hf)
    registry.register("scripted", ScriptedGenerator())
    routing = {"primary_expert": "gpt2", "active_experts": ["gpt2", "llama"],
               "expert_weights": {"gpt2": 0.7, "llama": 0.3}}
    registry.register("moe:fast", ScriptedGenerator("moe:fast", routing=routing), kind="mot")
    return TestClient(create_app(registry))


def events(response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_health_and_models_list_every_registered_name(client):
    assert client.get("/health").json()["status"] == "ok"
    cards = client.get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["tiny", "scripted", "moe:fast"]
    assert cards[0]["context_length"] == 512 and cards[2]["routed"] is True
    assert client.get("/v1/models/moe:fast").json()["kind"] == "mot"
    assert client.get("/v1/models/nope").status_code == 404


def test_temperature_zero_is_hf_greedy_generate(client, tiny_hf):
    prompt = "def add(a, b):\n    return"
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0}
    got = client.post("/v1/completions", json=body).json()
    ids = torch.tensor([tiny_hf.prompt_ids(prompt)])
    out = tiny_hf.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                 do_sample=False, pad_token_id=tiny_hf.base.pad_id)
    expected = tiny_hf.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert got["choices"][0]["text"] == expected
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    text = "".join(e["choices"][0]["text"] for e in events(streamed) if e["choices"])
    assert text == expected
    new_tokens = out.shape[1] - ids.shape[1]
    assert got["usage"] == {"prompt_tokens": ids.shape[1], "completion_tokens": new_tokens,
                            "total_tokens": ids.shape[1] + new_tokens}


def test_stop_strings_end_the_reply_before_the_stop(client):
    body = {"model": "tiny", "prompt": "class A:", "max_tokens": 16, "temperature": 0}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop
    expected = full[:full.find(stop)]
    cut = client.post("/v1/completions", json={**body, "stop": [stop]}).json()
    assert cut["choices"][0]["text"] == expected and cut["choices"][0]["finish_reason"] == "stop"
    streamed = events(client.post("/v1/completions", json={**body, "stop": stop, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in streamed if e["choices"]) == expected


def test_vanishing_temperature_is_greedy_not_a_crash(client):
    body = {"model": "tiny", "prompt": "import", "max_tokens": 8}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    tiny = client.post("/v1/completions", json={**body, "temperature": 1e-300, "top_k": 3, "top_p": 1e-9})
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy


def test_chat_stream_is_openai_chunks_with_role_first_and_usage_last(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = events(response)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 6
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    assert len(pieces) >= 2  # one chunk per token, not one blob


def test_completion_stream_echoes_then_pieces_then_finish_and_usage(client):
    body = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 5, "temperature": 0, "stream": True,
            "echo": True, "stream_options": {"include_usage": True}}
    chunks = events(client.post("/v1/completions", json=body))
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["text"] == "def f(x):"  # the echoed prompt opens the stream
    assert chunks[-2]["choices"][0] == {"index": 0, "text": "", "logprobs": None,
                                        "finish_reason": chunks[-2]["choices"][0]["finish_reason"]}
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 5
    plain = client.post("/v1/completions", json={**body, "stream": False, "echo": False}).json()
    assert "".join(c["choices"][0]["text"] for c in chunks[1:-2]) == plain["choices"][0]["text"]


def test_chat_fallback_format_and_tokenizer_chat_template(client, tiny_hf):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert tiny_hf.prompt_text(messages) == "system: be brief\nuser: hi\nassistant:"
    tokenizer = tiny_hf.tokenizer
    try:
        tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                   "{% if add_generation_prompt %}<assistant>{% endif %}")
        assert tiny_hf.prompt_text(messages) == "<system>be brief\n<user>hi\n<assistant>"
        reply = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 3,
                                                          "temperature": 0}).json()
        assert reply["usage"]["prompt_tokens"] == len(tokenizer("<system>be brief\n<user>hi\n<assistant>",
                                                                add_special_tokens=False)["input_ids"])
    finally:
        tokenizer.chat_template = None


def test_sampling_params_reach_the_generator(client):
    generator = client.app.state.registry.get("scripted").generator
    client.post("/v1/chat/completions", json={
        "model": "scripted", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "top_k": 7, "stop": ["w2"], "seed": 3})
    params = generator.params[-1]
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.stop, params.seed) == (
        3, 0.5, 0.9, 7, ["w2"], 3)
    assert generator.prompts[-1] == [{"role": "user", "content": "hi"}]


def test_routed_models_report_routing_in_replies_and_first_chunk(client):
    body = {"model": "moe:fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["routing"]["primary_expert"] == "gpt2"
    assert reply["routing"]["expert_weights"] == {"gpt2": 0.7, "llama": 0.3}
    chunks = events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert chunks[0]["routing"]["active_experts"] == ["gpt2", "llama"]
    assert "routing" not in client.post("/v1/chat/completions", json={**body, "model": "scripted"}).json()


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
    ({"model": "/etc/passwd", "prompt": "x"}, 404, "model_not_found"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "invalid_parameter"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "invalid_parameter"),
    ({"model": "tiny", "prompt": "x", "n": 2}, 400, "invalid_parameter"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_parameter"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "invalid_parameter"),
    ({"model": "tiny"}, 400, "invalid_parameter"),
    ({"model": "tiny", "prompt": "x " * 600}, 400, "context_length_exceeded"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 600}, 400, "context_length_exceeded"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 100_000}, 400, "max_tokens_too_large"),
])
def test_bad_requests_get_a_clear_4xx(client, body, status, code):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_malformed_json_and_unknown_routes_are_4xx(client):
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()
    assert client.get("/v1/nothing").status_code == 404
    assert client.post("/v1/completions", content=b"x" * (5 * 1024 * 1024)).status_code == 413


def test_api_key_is_required_on_the_api_when_set(tiny_hf):
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator())
    client = TestClient(create_app(registry, api_key="s3cret"))
    body = {"model": "scripted", "prompt": "x", "max_tokens": 1}
    assert client.get("/v1/models").status_code == 401
    wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200  # health and the UI stay public
    assert client.get("/").status_code == 200


def test_cors_is_off_by_default_and_on_for_listed_origins():
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator())
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    closed = TestClient(create_app(registry)).options("/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = TestClient(create_app(registry, cors_origins=["http://evil.example"]))
    assert opened.options("/v1/completions", headers=preflight).headers["access-control-allow-origin"] == \
        "http://evil.example"


def test_web_ui_is_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "mot chat" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_a_slot_is_free_again_when_the_reply_ends(monkeypatch, stream):
    """The worker thread hands its last piece and its slot back through the request's event loop.  A loop
    that closes with the response (a test client without a lifespan: one loop per request) must not lose the
    release: with one slot, the next request would wait forever.  The thread is held up right after posting
    its last piece, which made the release arrive too late when the two were separate hand-offs."""
    import threading
    import time

    from mot.serve import streaming

    post = streaming.GenerationRun._post

    def slow_end(self, item, **kwargs):
        post(self, item, **kwargs)
        if item is streaming.GenerationRun._END:
            time.sleep(0.3)  # the thread is slow to schedule the release after the last piece

    monkeypatch.setattr(streaming.GenerationRun, "_post", slow_end)
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator(words=3))
    client = TestClient(create_app(registry, max_concurrency=1))
    body = {"model": "scripted", "prompt": "x", "max_tokens": 3, "stream": stream}
    replies: list = []

    def ask_twice():
        for _ in range(2):
            replies.append(client.post("/v1/completions", json=body).status_code)

    worker = threading.Thread(target=ask_twice, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the second request never got the slot back"
    assert replies == [200, 200]
