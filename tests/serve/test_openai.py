"""The official ``openai`` client against a real server: models, chat, completions, parity.

At temperature 0 the served answer must be ``tunesmith chat``'s greedy answer for the same
prompt, token for token, for the base and for two adapters served together on one base; and
16 concurrent requests across the two adapters must each get their sequential answer.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

PROMPTS = [
    "How many patients live in Lyon?",
    "List the doctors.",
    "SELECT name FROM patients",
    "Which doctor has the most visits?",
]


def _ask(client, model: str, prompt: str, **kw):
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24, **kw
    )


def test_models_lists_the_base_and_both_adapters(client, serve_runs):
    base, run_a, run_b = serve_runs
    ids = [m.id for m in client.models.list().data]
    assert ids == [str(base), run_a.name, run_b.name]


def test_chat_stream_and_non_stream_agree(client, serve_runs):
    name = serve_runs[1].name
    full = _ask(client, name, PROMPTS[0])
    assert full.object == "chat.completion" and full.model == name
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(
        _ask(client, name, PROMPTS[0], stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_honours_max_tokens_stop_and_seed(client, serve_runs):
    name = serve_runs[2].name
    free = client.completions.create(model=name, prompt="SELECT", max_tokens=6, temperature=0)
    assert free.choices[0].finish_reason == "length" and free.usage.completion_tokens == 6
    chunks = client.completions.create(
        model=name, prompt="SELECT", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == free.choices[0].text
    stop = free.choices[0].text[2:4]
    cut = client.completions.create(
        model=name, prompt="SELECT", max_tokens=6, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == free.choices[0].text[: free.choices[0].text.index(stop)]
    sampled = [
        client.completions.create(
            model=name, prompt="SELECT", max_tokens=8, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_greedy_answers_equal_tunesmith_chat(client, serve_runs, capsys):
    """The CLI's one-shot chat (its own loading and generate()) vs the server, per model."""
    from tunesmith.cli import main
    from tunesmith.data.records import Conversation
    from tunesmith.data.render import render_prompt
    from tunesmith.eval.generate import generate
    from tunesmith.models import load_adapted, load_model_and_tokenizer

    base, run_a, run_b = serve_runs
    for name, source in ((str(base), None), (run_a.name, run_a), (run_b.name, run_b)):
        argv = ["chat", "--prompt", PROMPTS[0], "--json", "--system", "", "--max-new-tokens", "24"]
        argv += [str(source)] if source else ["--model", str(base)]
        assert main(argv) == 0
        answer = json.loads(capsys.readouterr().out)["answer"]
        served = _ask(client, name, PROMPTS[0])
        assert served.choices[0].message.content.strip() == answer, name
        # Token for token: the same number of new tokens as generate() (end-of-turn included).
        if source:
            loaded = load_adapted(source)
            model, tok = loaded.model, loaded.tokenizer
        else:
            model, tok, _ = load_model_and_tokenizer(str(base))
        conv = Conversation.from_messages([{"role": "user", "content": PROMPTS[0]}])
        ref = generate(model, tok, [render_prompt(tok, conv)], max_new_tokens=24, batch_size=1)
        assert served.usage.completion_tokens == ref[0].num_new_tokens, name


@pytest.mark.parametrize("stream", [False, True])
def test_sixteen_concurrent_requests_across_two_adapters(client, server_url, serve_runs, stream):
    import httpx

    names = [serve_runs[1].name, serve_runs[2].name]
    jobs = [(names[i % 2], PROMPTS[(i // 2) % len(PROMPTS)]) for i in range(16)]

    def answer(job):
        if not stream:
            return _ask(client, *job).choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in _ask(client, *job, stream=True))

    sequential = {job: answer(job) for job in set(jobs)}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(answer, jobs))
    assert together == [sequential[job] for job in jobs]
    assert len(set(sequential.values())) > 1  # the adapters really differ
    assert httpx.get(server_url + "/health").json()["peak_batch"] > 1  # decoded together
