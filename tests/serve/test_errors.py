"""Bad input never crashes the server nor returns 500: each gets OpenAI's error JSON and a 4xx,
and the server answers a good request right after. Also the API key and client disconnects."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tunesmith.serve.thread import running

GOOD = {"messages": [{"role": "user", "content": "How many patients?"}], "max_tokens": 4}


def _chat(model: str, **fields) -> bytes:
    return json.dumps({"model": model, **GOOD, **fields}).encode()


def _cases(model: str) -> list[tuple[str, str, bytes, int]]:
    """(id, path, body, expected status)."""
    chat, comp = "/v1/chat/completions", "/v1/completions"
    return [
        ("malformed-json", chat, b'{"model": "x", "messages": [', 400),
        ("not-an-object", chat, b"[1, 2]", 400),
        ("non-utf8", chat, b'{"model": "\xff\xfe"}', 400),
        ("empty-body", chat, b"", 400),
        ("missing-messages", chat, json.dumps({"model": model}).encode(), 400),
        ("empty-messages", chat, _chat(model, messages=[]), 400),
        ("messages-not-a-list", chat, _chat(model, messages="hello"), 400),
        ("wrong-role", chat, _chat(model, messages=[{"role": "wizard", "content": "x"}]), 400),
        (
            "ends-with-assistant",
            chat,
            _chat(model, messages=[{"role": "assistant", "content": "x"}]),
            400,
        ),
        (
            "image-part",
            chat,
            _chat(model, messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            400,
        ),
        ("unknown-model", chat, _chat("no-such-model"), 404),
        ("missing-model", chat, json.dumps(GOOD).encode(), 400),
        ("max-tokens-zero", chat, _chat(model, max_tokens=0), 400),
        ("max-tokens-negative", chat, _chat(model, max_tokens=-5), 400),
        ("max-tokens-absurd", chat, _chat(model, max_tokens=10**12), 400),
        ("max-tokens-not-int", chat, _chat(model, max_tokens="many"), 400),
        ("temperature-out-of-range", chat, _chat(model, temperature=7), 400),
        ("top-p-zero", chat, _chat(model, top_p=0), 400),
        ("n-two", chat, _chat(model, n=2), 400),
        ("too-many-stops", chat, _chat(model, stop=["a", "b", "c", "d", "e"]), 400),
        (
            "prompt-over-context",
            chat,
            _chat(model, messages=[{"role": "user", "content": "SELECT name " * 600}]),
            400,
        ),
        (
            "completion-over-context",
            comp,
            json.dumps({"model": model, "prompt": "SELECT name " * 600}).encode(),
            400,
        ),
        ("completion-empty-prompt", comp, json.dumps({"model": model, "prompt": ""}).encode(), 400),
        (
            "completion-two-prompts",
            comp,
            json.dumps({"model": model, "prompt": ["a", "b"]}).encode(),
            400,
        ),
        ("unknown-route", "/v1/nothing", b"{}", 404),
    ]


def test_bad_input_gets_4xx_and_the_server_keeps_serving(server_url, serve_runs):
    model = serve_runs[1].name
    with httpx.Client(base_url=server_url, timeout=60) as http:
        for case, path, body, status in _cases(model):
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (case, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"], case
            good = http.post("/v1/chat/completions", content=_chat(model))
            assert good.status_code == 200, (case, good.text)
            assert good.json()["choices"][0]["message"]["role"] == "assistant"


def test_client_that_disconnects_mid_stream_frees_its_row(server_url, serve_runs):
    model = serve_runs[2].name
    body = _chat(model, max_tokens=400, stream=True, temperature=0)
    with httpx.Client(base_url=server_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", content=body) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event arrived; now hang up
        deadline = time.monotonic() + 20
        health = http.get("/health").json()
        while (health["running"] or health["waiting"]) and time.monotonic() < deadline:
            time.sleep(0.05)
            health = http.get("/health").json()
        assert health["dropped"] == 1, health  # ended early, not generated to the end
        assert http.post("/v1/chat/completions", content=_chat(model)).status_code == 200


@pytest.fixture(scope="module")
def keyed_url(serve_runs):
    from tunesmith import serve

    with running(serve(serve_runs[1], api_key="sekrit", default_max_tokens=4)) as url:
        yield url


def test_api_key_is_required_on_the_api(keyed_url, serve_runs):
    from openai import AuthenticationError, OpenAI

    model = serve_runs[1].name
    body = _chat(model)
    assert httpx.post(keyed_url + "/v1/chat/completions", content=body).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    r = httpx.post(keyed_url + "/v1/chat/completions", content=body, headers=wrong)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed_url + "/v1/models").status_code == 401
    right = {"authorization": "Bearer sekrit"}
    assert (
        httpx.post(keyed_url + "/v1/chat/completions", content=body, headers=right).status_code
        == 200
    )
    assert httpx.get(keyed_url + "/health").status_code == 200  # probes need no key
    ok = OpenAI(base_url=keyed_url + "/v1", api_key="sekrit", max_retries=0)
    assert [m.id for m in ok.models.list().data][-1] == model
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=keyed_url + "/v1", api_key="nope", max_retries=0).models.list()
