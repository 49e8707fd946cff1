"""Regressions of the adversarial probes against ``mot serve`` (issue 18, server items 1-6): each test
replays one probe.

1. a lone surrogate in any text field is a 400 with OpenAI's error body (it was a plain-text 500);
2. a chunked body over the limit gets a 413 as soon as the limit is passed, the rest unread (it was all read);
3. a burst of streaming requests over the queue gets 429 + Retry-After, not 200 + an in-stream error;
4. a client that leaves a non-streaming request cancels its generation and frees its slot or queue place;
5. the API schema and its viewers need the API key when one is set (/health and the UI stay public);
6. ``--api-key`` on the command line warns (readable by every local user), MOT_API_KEY / --api-key-file do
   not; the web UI keeps the key in sessionStorage, never in localStorage.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from mot.serve import ModelRegistry, create_app
from tests.serve.conftest import ScriptedGenerator, wait_until

# ------------------------------------------------------------------ 1. invalid Unicode


@pytest.fixture(scope="module")
def tiny_client(tiny_hf):
    registry = ModelRegistry()
    registry.register("tiny", tiny_hf)
    return TestClient(create_app(registry))


CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"


@pytest.mark.parametrize(("path", "raw", "param"), [
    (TEXT, '{"model": "tiny", "prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    (TEXT, '{"model": "tiny", "prompt": "x\\udfffy", "max_tokens": 2, "stream": true}', "prompt"),
    (TEXT, '{"model": "tiny", "prompt": ["\\ud800"], "max_tokens": 2}', "prompt[0]"),
    (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
     "messages[0].content"),
    (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}',
     "messages[0].content[0].text"),
    (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop[0]"),
    (TEXT, '{"model": "\\ud800", "prompt": "x"}', "model"),
    (TEXT, '{"model": "tiny", "prompt": "x", "\\ud800": 1}', None),
])
def test_lone_surrogate_is_a_400_with_an_openai_error_body(tiny_client, path, raw, param):
    response = tiny_client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_unicode", param)
    assert "lone surrogate" in error["message"] and "U+D" in error["message"]


def test_a_valid_surrogate_pair_is_ordinary_text(tiny_client):
    raw = '{"model": "tiny", "prompt": "\\ud83d\\ude00", "max_tokens": 2, "temperature": 0}'  # one emoji
    response = tiny_client.post(TEXT, content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ 2. body limit, counted as it arrives

LIMIT = 64 * 1024
CHUNK = 16 * 1024


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


def test_chunked_body_gets_413_once_the_limit_is_passed_and_the_rest_is_never_read():
    """The probe: 8 MiB sent chunked (no Content-Length) was read whole; the 4 MiB limit never applied."""
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator())
    app = create_app(registry, max_body_bytes=LIMIT)
    chunks_total = 8 * 1024 * 1024 // CHUNK
    pulled, sent = [], []

    async def receive() -> dict:
        pulled.append(CHUNK)
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": len(pulled) < chunks_total}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    asyncio.run(asyncio.wait_for(app(_scope(TEXT, headers), receive, send), 30))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]["code"] == "request_too_large"
    assert sum(pulled) == LIMIT + CHUNK  # stopped at the first chunk past the limit


def test_body_within_the_limit_reaches_the_app_unchanged_when_chunked():
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator(words=3))
    app = create_app(registry, max_body_bytes=LIMIT)
    body = json.dumps({"model": "scripted", "prompt": "x" * (LIMIT - 200), "max_tokens": 3}).encode()
    pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
    sent: list = []

    async def receive() -> dict:
        if not pieces:  # after the body a server's receive waits for the disconnect: this client never leaves
            await asyncio.Event().wait()
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(_scope(TEXT, [(b"content-type", b"application/json")]), receive, send), 30))
    assert sent[0]["status"] == 200
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["choices"][0]["text"] == "w0 w1 w2 "


def test_live_server_answers_413_while_a_chunked_upload_is_still_going(serve):
    """Over a real socket: the 413 comes back while the client is still sending (the old server read to the
    end of the body before answering)."""
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator())
    with serve(create_app(registry, max_body_bytes=LIMIT)) as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
            sent, budget, answer = 0, 256 * 1024 * 1024, b""
            while sent < budget:
                readable, writable, _ = select.select([sock], [sock], [], 10)
                if readable:
                    answer = sock.recv(65536)
                    break
                assert writable, "the server neither read nor answered for 10 s"
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    answer = sock.recv(65536)
                    break
                sent += CHUNK
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))
            while len(body) < length:  # the headers and the body may come in separate segments
                more = sock.recv(65536)
                if not more:
                    break
                body += more
            answer = head + b"\r\n\r\n" + body
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < budget  # answered before the body ended (which was never going to come)
    assert b'"request_too_large"' in answer


# ------------------------------------------------------------------ 3. queue full: 429 for streams too


class _InStep(ScriptedGenerator):
    """Counting a prompt's tokens waits until ``parties`` requests are counting at once: a burst whose
    requests all pass validation together, as concurrent clients do."""

    def __init__(self, parties: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.barrier = threading.Barrier(parties, timeout=20)

    def count_tokens(self, prompt) -> int:
        self.barrier.wait()
        return 1


@pytest.mark.parametrize("stream", [True, False])
def test_a_burst_over_the_queue_gets_429_with_retry_after_before_any_stream_starts(serve, stream):
    burst, room = 6, 2  # one running, one waiting
    gate = threading.Event()
    generator = _InStep(burst, words=2, gate=gate)
    registry = ModelRegistry()
    registry.register("scripted", generator)
    app = create_app(registry, max_concurrency=1, max_queue=1)
    body = {"model": "scripted", "prompt": "x", "max_tokens": 2, "stream": stream}
    results: list[tuple[int, str | None, str]] = []

    with serve(app) as url:
        def call() -> None:
            with httpx.stream("POST", url + TEXT, json=body, timeout=30) as response:
                results.append((response.status_code, response.headers.get("retry-after"), response.read().decode()))

        threads = [threading.Thread(target=call) for _ in range(burst)]
        for t in threads:
            t.start()
        refused_in_time = wait_until(lambda: len(results) >= burst - room, timeout=20)
        gate.set()
        for t in threads:
            t.join(30)
    assert refused_in_time, results
    refused = [r for r in results if r[0] == 429]
    served = [r for r in results if r[0] == 200]
    assert (len(served), len(refused)) == (room, burst - room), [(s, text[:120]) for s, _, text in results]
    for _, retry_after, text in refused:
        assert retry_after == "1" and json.loads(text)["error"]["code"] == "queue_full"
    for _, _, text in served:  # whole replies, no error inside
        assert '"error"' not in text
        assert _reply_text(text, stream) == "w0 w1 "
    assert app.state.admission.active == 0 and app.state.admission.queued == 0


def _reply_text(raw: str, stream: bool) -> str:
    if not stream:
        return json.loads(raw)["choices"][0]["text"]
    lines = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return "".join(c["text"] for line in lines[:-1] for c in json.loads(line)["choices"])


# ------------------------------------------------------------------ 4. disconnects free the slot


def test_client_leaving_a_non_streaming_request_cancels_it_and_frees_the_slot(serve):
    """The probe: the slot stayed busy 4.5-23 s, until generation ended by itself."""
    generator = ScriptedGenerator(words=4000, delay=0.005)  # 20 s if nobody stops it
    registry = ModelRegistry()
    registry.register("scripted", generator)
    app = create_app(registry, max_concurrency=1)
    body = {"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000}
    with serve(app) as url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up; its connection closes
            httpx.post(url + CHAT, json=body, timeout=httpx.Timeout(10, read=0.5))
        assert wait_until(generator.closed.is_set, timeout=3), generator.produced
        assert generator.produced < 1000, generator.produced
        assert wait_until(lambda: app.state.admission.active == 0, timeout=2)
        again = httpx.post(url + CHAT, json={**body, "max_tokens": 2}, timeout=10)  # the slot serves again
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "w0 w1 "


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_while_queued_gives_its_place_back(serve, stream):
    gate = threading.Event()
    generator = ScriptedGenerator(words=1, gate=gate)
    registry = ModelRegistry()
    registry.register("scripted", generator)
    app = create_app(registry, max_concurrency=1, max_queue=1)
    body = {"model": "scripted", "prompt": "x", "max_tokens": 1}
    admission = app.state.admission
    with serve(app) as url:
        first = threading.Thread(target=lambda: httpx.post(url + TEXT, json=body, timeout=30))
        first.start()
        assert wait_until(lambda: admission.active == 1)
        if stream:  # the stream opens (200, first chunk), waits in line, and the client leaves
            with httpx.stream("POST", url + TEXT, json={**body, "stream": True}, timeout=10) as waiting:
                lines = waiting.iter_lines()  # kept: an iterator dropped half-read closes the connection
                assert waiting.status_code == 200 and next(lines).startswith("data: ")
                assert admission.queued == 1
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + TEXT, json=body, timeout=httpx.Timeout(10, read=0.5))
        assert wait_until(lambda: admission.queued == 0, timeout=3), admission.queued
        gate.set()
        first.join(30)
        assert httpx.post(url + TEXT, json=body, timeout=10).json()["choices"][0]["text"] == "w0 "
    assert generator.produced == 2  # the first request and the last: the one that left never generated


# ------------------------------------------------------------------ 5. the schema and docs behind the key


def test_schema_and_docs_need_the_key_when_one_is_set():
    registry = ModelRegistry()
    registry.register("scripted", ScriptedGenerator())
    locked = TestClient(create_app(registry, api_key="s3cret"))
    for path in ("/openapi.json", "/docs", "/redoc"):
        refused = locked.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert locked.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
    schema = locked.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(schema["paths"])
    docs = locked.get("/docs", headers={"Authorization": "Bearer s3cret"}).text
    assert "/openapi.json" in docs
    assert locked.get("/health").status_code == 200 and locked.get("/").status_code == 200  # public
    assert locked.get("/static/app.js").status_code == 200
    public = TestClient(create_app(registry))  # no key: nothing is locked
    assert all(public.get(p).status_code == 200 for p in ("/openapi.json", "/docs", "/redoc"))


# ------------------------------------------------------------------ 6. where the key comes from


@pytest.fixture
def run_serve(tiny_experts, monkeypatch, capsys):
    """``run_serve(*args, env=None)`` -> (exit code, stderr, the app uvicorn would have served)."""
    import uvicorn

    from mot.cli.main import main

    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))

    def run(*args: str, env: dict | None = None):
        monkeypatch.delenv("MOT_API_KEY", raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(["serve", "--model", f"tiny={tiny_experts['gpt2'].path}", *args])
        return code, capsys.readouterr().err, apps[-1] if apps and code == 0 else None

    return run


def _key_works(app, key: str) -> bool:
    client = TestClient(app)
    return client.get("/v1/models").status_code == 401 and \
        client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_api_key_on_the_command_line_warns_env_and_file_do_not(run_serve, tmp_path):
    code, err, app = run_serve("--api-key", "argv-key")
    assert code == 0 and _key_works(app, "argv-key")
    assert "warning: --api-key puts the key in this process's command line" in err
    assert "MOT_API_KEY" in err and "--api-key-file" in err

    code, err, app = run_serve(env={"MOT_API_KEY": "env-key"})
    assert code == 0 and _key_works(app, "env-key") and "warning" not in err

    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    code, err, app = run_serve("--api-key-file", str(key_file))
    assert code == 0 and _key_works(app, "file-key") and "warning" not in err


    code, err, app = run_serve("--api-key-file", str(key_file), env={"MOT_API_KEY": "env-key"})
    assert code == 0 and _key_works(app, "file-key")  # an explicit option wins over the environment


@pytest.mark.parametrize(("setup", "message"), [
    ("both", "given twice"),
    ("empty", "first line is empty"),
    ("missing", "cannot read it"),
])
def test_api_key_file_errors_are_one_line(run_serve, tmp_path, setup, message):
    key_file = tmp_path / "key"
    if setup != "missing":
        key_file.write_text("" if setup == "empty" else "k\n")
    args = ["--api-key-file", str(key_file), *(["--api-key", "k"] if setup == "both" else [])]
    code, err, _ = run_serve(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


NODE = shutil.which("node")
HARNESS = Path(__file__).with_name("storage_harness.js")
APP_JS = Path(__file__).resolve().parents[2] / "src" / "mot" / "serve" / "static" / "app.js"


@pytest.mark.skipif(NODE is None, reason="node not found: install nodejs to run the web UI storage test")
@pytest.mark.parametrize("left_by_older_version", [False, True])
def test_web_ui_keeps_the_api_key_in_session_storage_only(left_by_older_version):
    """app.js run by node against in-memory Web Storage: a typed key goes to sessionStorage; localStorage
    (on disk, kept across sessions) never holds it, and a key an older version left there is moved out."""
    settings = {"temperature": "0.3", **({"api_key": "old-key"} if left_by_older_version else {})}
    seed = json.dumps({"mot.settings": json.dumps(settings)})
    out = subprocess.run([NODE, str(HARNESS), str(APP_JS), seed], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["keyShown"] == ("old-key" if left_by_older_version else "")
    assert report["session"] == {"mot.apiKey": "typed-key"}
    local = json.dumps(report["local"])
    assert "typed-key" not in local and "old-key" not in local and "api_key" not in local
    assert json.loads(report["local"]["mot.settings"])["temperature"] == "0.7"  # the other settings still persist
