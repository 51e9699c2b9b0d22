"""The UI's HTTP API against the real server on a loopback port (httpx), real subprocesses.

Bad input of every endpoint gets a 4xx JSON error, never a 500; paths stay in the workspace;
the form speaks the CLI's messages; one launch per idempotency key; the state a restarted
server shows comes from the run directory; chat streams through ``tunesmith serve``'s API.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.ui.conftest import TINY_RUN
from tunesmith.cli import main
from tunesmith.config import TrainConfig
from tunesmith.serve.thread import running
from tunesmith.ui import forms
from tunesmith.ui.app import create_app

pytestmark = pytest.mark.xdist_group("tiny-e2e")
H = {"X-Tunesmith-UI": "1"}


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, headers=H, timeout=120) as c:
        yield c


def _wait(client, name: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get("/api/run", params={"name": name}).json()
        if run.get("state") in states:
            return run
        time.sleep(0.3)
    raise AssertionError(f"{name} never reached {states}: {run}")


@pytest.fixture(scope="module")
def finished(client):
    """One 6-step run launched through the API (twice with one key: one process)."""
    body = {"values": {**TINY_RUN, "max-steps": "6", "output": "runs/api"}, "key": "k-1"}
    first = client.post("/api/launch", json=body)
    again = client.post("/api/launch", json=body)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json() == again.json() == {"name": "runs/api"}
    run = _wait(client, "runs/api", ("finished", "failed"))
    assert run["state"] == "finished", run.get("log")
    return run


def test_form_has_every_field_with_help_and_default():
    fields = {f["name"]: f for f in forms.field_schema()}
    assert list(fields) == [n.replace("_", "-") for n in TrainConfig.model_fields]
    assert fields["rank"]["default"] == 4 and fields["rank"]["kind"] == "int"
    assert fields["recipe"]["choices"] == ["default", "seed"]
    assert fields["lr-scheduler"]["choices"] == ["cosine", "linear", "constant"]
    assert all(f["help"] for f in fields.values())


@pytest.mark.parametrize(
    ("values", "argv"),
    [({"rank": "0"}, ["--rank", "0"]), ({"lr": "x"}, ["--lr", "x"]),
     ({"lr-scheduler": "cos"}, ["--lr-scheduler", "cos"]), ({"epochs": "nan"}, ["--epochs", "nan"])],
)  # fmt: skip
def test_validation_messages_are_the_cli_s(values, argv, capsys):
    assert main(["train", *argv]) == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert printed.endswith(forms.errors(values)[0]["message"]), printed


def test_plan_and_the_does_not_fit_question(client):
    r = client.post("/api/plan", json={"values": {"model": "models/tiny"}}).json()
    assert r["plan"]["verdict"] == "fits" and r["plan"]["apply"]["batch-size"] >= 1
    big = {"model": "models/tiny", "batch-size": "4096", "seq-len": "100000"}
    r = client.post("/api/launch", json={"values": big, "key": "k-big"})
    assert r.status_code == 409 and r.json()["needs_force"]
    assert "does not fit" in r.json()["error"]["message"]
    assert "--force" in r.json()["error"]["message"]


def test_launched_run_reads_from_its_directory(client, workspace, finished):
    assert finished["step"] == 6 and len(finished["metrics"]) == 6
    assert finished["eval"]["rows"] and finished["plan"]["verdict"] == "fits"
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == ["api"]
    # A restarted server (a new app) shows the same truth: the state lives in the run directory.
    with running(create_app(workspace)) as url:
        runs = httpx.get(url + "/api/runs").json()["runs"]
    row = next(r for r in runs if r["name"] == "runs/api")
    assert row["state"] == "finished" and row["step"] == 6 and row["method"] == "lora"
    assert row["headline"]["metric"] == "execution_accuracy"


def test_events_stream_the_curves_then_end(client, finished):
    with client.stream("GET", "/api/run/events", params={"name": "runs/api"}) as r:
        text = "".join(r.iter_text())
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    kinds = [e[0].removeprefix("event: ") for e in events]
    assert kinds[0] == "metrics" and kinds[-1] == "end"
    rows = json.loads(events[0][1].removeprefix("data: "))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[0]["loss"] > 0


def test_chat_streams_through_the_serve_api(client, finished):
    names = client.post("/api/chat/load", json={"name": "runs/api"}).json()
    assert names["model"] == "api" and names["base"]
    for model in (names["model"], names["base"]):
        body = {
            "model": model,
            "stream": True,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert r.status_code == 404


def test_compare_two_runs(client, finished):
    r = client.post("/api/compare", json={"runs": ["runs/api", "runs/api"]}).json()
    methods = [row["method"] for row in r["rows"]]
    assert methods == ["base", "lora", "lora"] and r["plot"]
    assert r["rows"][1]["trainable_params"] > 0


def test_upload_is_validated_like_a_data_file(client, workspace):
    bad = client.post("/api/upload", params={"filename": "bad.jsonl"}, content=b"not json\n" * 5)
    assert bad.status_code == 400 and "invalid" in bad.json()["error"]["message"]
    assert not (workspace / "uploads" / "bad.jsonl").exists()
    good = (workspace / "data" / "train.jsonl").read_bytes()
    r = client.post("/api/upload", params={"filename": "../../good.jsonl"}, content=good)
    assert r.status_code == 200 and r.json()["path"] == "uploads/good.jsonl"
    assert r.json()["kept"] > 0


BAD = [  # (method, path, params, body): every endpoint, with input it must refuse
    ("GET", "/api/run", {"name": "../etc"}, None),
    ("GET", "/api/run", {"name": "/etc"}, None),
    ("GET", "/api/run", {}, None),
    ("GET", "/api/run", {"name": "data"}, None),
    ("GET", "/api/run/events", {"name": "../../x"}, None),
    ("GET", "/api/file", {"path": "../secret"}, None),
    ("GET", "/api/file", {"path": "/etc/passwd"}, None),
    ("GET", "/api/file", {"path": "data/missing.jsonl"}, None),
    ("POST", "/api/run/stop", {}, {"name": "runs/none"}),
    ("POST", "/api/run/stop", {}, {}),
    ("POST", "/api/run/resume", {}, {"name": "data", "key": "r"}),
    ("POST", "/api/run/resume", {}, {"name": "runs/x"}),
    ("POST", "/api/plan", {}, "not an object"),
    ("POST", "/api/launch", {}, {"values": {"model": "does/not-exist-anywhere"}, "key": "m"}),
    ("POST", "/api/launch", {}, {"values": {"data": ["/etc/passwd"]}, "key": "a"}),
    ("POST", "/api/launch", {}, {"values": {"output": "../out"}, "key": "b"}),
    ("POST", "/api/launch", {}, {"values": {"bogus": 1}, "key": "c"}),
    ("POST", "/api/launch", {}, {"values": {}}),
    ("POST", "/api/launch", {}, {"values": [], "key": "d"}),
    ("POST", "/api/upload", {"filename": "x.exe"}, b"x"),
    ("POST", "/api/upload", {}, b"x"),
    ("POST", "/api/data/clean", {}, {"file": "../x.jsonl"}),
    ("POST", "/api/data/clean", {}, {"file": 3}),
    ("POST", "/api/data/preview", {}, {"file": "data/train.jsonl", "n": 0}),
    ("POST", "/api/data/preview", {}, {"file": "/etc/passwd"}),
    ("POST", "/api/data/preview", {}, {"model": "../m"}),
    ("POST", "/api/compare", {}, {"runs": "runs/a"}),
    ("POST", "/api/compare", {}, {"runs": ["../x"]}),
    ("POST", "/api/compare", {}, {"runs": []}),
    ("POST", "/api/chat/load", {}, {"name": "data"}),
    ("POST", "/api/export", {}, {"name": "data"}),
    ("POST", "/api/export", {}, {"name": "runs/api", "format": "zip"}),
    ("POST", "/v1/chat/completions", {}, b"{broken"),
    ("GET", "/api/nothing-here", {}, None),
]


def test_bad_input_gets_a_4xx_json_error_never_a_500(client, finished):
    for method, path, params, body in BAD:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = client.request(method, path, params=params, **({} if body is None else kw))
        assert 400 <= r.status_code < 500, (method, path, params, body, r.status_code, r.text)
        assert r.json()["error"]["message"], (path, r.text)


def test_security_header_host_and_token(server, workspace):
    r = httpx.post(server + "/api/plan", json={"values": {}})
    assert r.status_code == 403  # no X-Tunesmith-UI header: a cross-site form cannot post
    r = httpx.get(server + "/api/runs", headers={"Host": "evil.example"})
    assert r.status_code == 403  # DNS rebinding onto the loopback server
    with running(create_app(workspace, api_key="s3cret")) as url:
        assert httpx.get(url + "/api/runs").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "/api/runs", headers=auth).status_code == 200
        with httpx.Client(base_url=url) as browser:
            assert browser.get("/", params={"token": "s3cret"}).status_code == 200
            assert browser.get("/api/runs").status_code == 200  # the cookie the page got


def test_public_host_needs_an_api_key(capsys, monkeypatch):
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err
