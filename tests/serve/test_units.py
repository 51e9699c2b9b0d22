"""Unit checks: streamed text and stop strings, sampling, the KV batch, the command builders."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.tiny import make_tokenizer
from tunesmith.errors import UserInputError


def test_text_stream_pieces_add_up_and_stop_strings_are_cut():
    from tunesmith.serve.text import TextStream

    tok = make_tokenizer()
    ids = tok("SELECT name FROM patients WHERE city = 'Lyon';", add_special_tokens=False)[
        "input_ids"
    ]
    plain = TextStream(tok)
    assert "".join(plain.add(t) for t in ids) + plain.rest() == tok.decode(ids)
    stopped = TextStream(tok, ("FROM",))
    pieces = []
    for t in ids:
        pieces.append(stopped.add(t))
        if stopped.stopped:
            break
    pieces.append(stopped.rest())
    assert "".join(pieces) == "SELECT name "
    assert all("F" not in p for p in pieces)  # the held-back tail never leaked a stop's start


def test_text_stream_holds_back_incomplete_utf8():
    from tunesmith.serve.text import TextStream

    tok = make_tokenizer()
    ids = tok("é ü", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    pieces = [stream.add(t) for t in ids] + [stream.rest()]
    assert "".join(pieces) == "é ü"
    assert all("\ufffd" not in p for p in pieces)


def test_sampling_is_greedy_at_zero_and_seeded_otherwise():
    from tunesmith.serve.sampling import Sampling

    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    assert Sampling(4, temperature=0).choose(logits) == 1
    draws = [Sampling(4, temperature=1.0, seed=3) for _ in range(2)]
    assert [draws[0].choose(logits) for _ in range(20)] == [
        draws[1].choose(logits) for _ in range(20)
    ]
    # Token 1 holds 47.5% of the mass and token 2 43%: top_p=0.4 keeps 1 alone, 0.9 both.
    narrow, wide = Sampling(64, top_p=0.4, seed=0), Sampling(64, top_p=0.9, seed=0)
    assert {narrow.choose(logits) for _ in range(50)} == {1}
    assert {wide.choose(logits) for _ in range(200)} == {1, 2}


def test_kv_batch_rows_decode_as_if_alone(tiny_llama_dir):
    """Left-padded rows that join and leave give each row its solo greedy tokens."""
    from transformers import AutoModelForCausalLM

    from tunesmith.serve.batch import KVBatch, cache_argument, left_padded, returned_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    arg = cache_argument(model)
    prompts = [[5, 17, 42, 99, 7], [300, 12], [401, 3, 77, 256, 18, 19, 20]]

    @torch.inference_mode()
    def solo(prompt, n):
        ids = torch.tensor([prompt])
        out = []
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        return out

    @torch.inference_mode()
    def prefill(rows):
        ids, mask, pos = left_padded(rows, 0, "cpu")
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return KVBatch(returned_cache(out), mask), out.logits[:, -1].argmax(-1).tolist()

    @torch.inference_mode()
    def step(batch, tokens):
        mask, pos = batch.decode_inputs()
        ids = torch.tensor([[t] for t in tokens])
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **{arg: batch.cache},
        )
        batch.advanced(returned_cache(out), mask)
        return out.logits[:, -1].argmax(-1).tolist()

    batch, nxt = prefill(prompts[:2])
    got = [[t] for t in nxt]
    nxt = step(batch, nxt)
    for row, t in zip(got, nxt, strict=True):
        row.append(t)
    fresh, first = prefill(prompts[2:])  # a row joins at a step boundary
    batch.join(fresh)
    got.append(first)
    nxt = step(batch, nxt + first)
    for row, t in zip(got, nxt, strict=True):
        row.append(t)
    batch.keep([1, 2])  # row 0 leaves; its padding columns are cut
    nxt = step(batch, nxt[1:])
    for row, t in zip(got[1:], nxt, strict=True):
        row.append(t)
    assert got[0] == solo(prompts[0], 3)
    assert got[1] == solo(prompts[1], 4)
    assert got[2] == solo(prompts[2], 3)


def test_vllm_command_serves_the_shared_base_with_every_lora(serve_runs):
    from tunesmith.serve.external import vllm_command

    base, run_a, run_b = serve_runs
    argv = vllm_command([run_a, run_b], port=9000, api_key="k")
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(base)
    assert argv[argv.index("--port") + 1] == "9000" and argv[argv.index("--api-key") + 1] == "k"
    assert "--enable-lora" in argv and argv[argv.index("--max-lora-rank") + 1] == "8"
    mods = argv[argv.index("--lora-modules") + 1 :]
    assert mods == [f"sql={run_a / 'adapter'}", f"chat={run_b / 'adapter'}"]


def test_vllm_command_refuses_non_lora_and_two_bases(serve_runs, tmp_path):
    import json
    import shutil

    from tests.export.adapters import make_adapter
    from tunesmith.serve.external import vllm_command

    base, run_a, _ = serve_runs
    ia3 = make_adapter(base, tmp_path / "ia3", "ia3")
    with pytest.raises(UserInputError, match="LoRA adapters only"):
        vllm_command([run_a, ia3])
    other = shutil.copytree(run_a, tmp_path / "other")
    # The loader reads the base from tunesmith_base.json, the run's config.yaml, then peft's
    # adapter_config.json: move the copy to another base in all three.
    (other / "config.yaml").write_text("model: /elsewhere\nmethod: lora\n")
    for name, key in (
        ("tunesmith_base.json", "model"),
        ("adapter_config.json", "base_model_name_or_path"),
    ):
        f = other / "adapter" / name
        if f.is_file():
            f.write_text(json.dumps({**json.loads(f.read_text()), key: "/elsewhere"}))
    with pytest.raises(UserInputError, match="one base per process"):
        vllm_command([run_a, other])


def test_llamacpp_command_finds_the_runs_gguf(tmp_path):
    from tunesmith.serve.external import llamacpp_command

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    with pytest.raises(UserInputError, match="tunesmith export"):
        llamacpp_command(run)
    gguf = run / "export" / "model.gguf"
    gguf.write_bytes(b"GGUF")
    argv = llamacpp_command(run, port=9001, api_key="k")
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert argv[argv.index("--model") + 1] == str(gguf)
    assert argv[argv.index("--model_alias") + 1] == "run"
    assert argv[argv.index("--port") + 1] == "9001" and argv[argv.index("--api_key") + 1] == "k"


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
def test_missing_engine_package_is_a_usage_error(engine, serve_runs, tmp_path, capsys, monkeypatch):
    import importlib.util

    from tunesmith.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n in ("vllm", "llama_cpp") else real(n, *a),
    )
    source = serve_runs[1]
    if engine == "llamacpp":
        source = tmp_path / "m.gguf"
        source.write_bytes(b"GGUF")
    assert main(["serve", str(source), "--engine", engine]) == 2
    assert "pip install" in capsys.readouterr().err


def test_runs_on_one_base_share_it_and_a_full_model_stands_alone(serve_runs, tmp_path):
    import shutil

    from tunesmith.serve.models import BASE_ROW, load_served_models

    base, run_a, run_b = serve_runs
    full = tmp_path / "full"
    shutil.copytree(base, full / "model")  # a full fine-tune's run directory holds model/
    served = {
        m.name: m for m in load_served_models([run_a, full], adapters={"b": run_b / "adapter"})
    }
    assert set(served) == {str(base), "sql", "b", "full"}
    shared = served[str(base)].backend
    assert served["sql"].backend is shared and served["b"].backend is shared and shared.mixed
    assert served[str(base)].adapter == BASE_ROW and served["sql"].adapter != served["b"].adapter
    assert served["full"].kind == "model" and served["full"].backend is not shared
    assert served["full"].adapter is None and not served["full"].backend.mixed


def test_prompt_learning_runs_are_refused_and_names_must_be_unique(serve_runs, tmp_path):
    from tests.export.adapters import make_adapter
    from tunesmith.serve.models import load_served_models, parse_adapter_flags

    base, run_a, _ = serve_runs
    prefix = make_adapter(base, tmp_path / "prefix", "prefix")
    with pytest.raises(UserInputError, match="cannot be served"):
        load_served_models([prefix])
    with pytest.raises(UserInputError, match="named 'sql'"):
        load_served_models([run_a], adapters={"sql": run_a / "adapter"})
    assert parse_adapter_flags(["a=/x", "b=/y"]) == {"a": "/x", "b": "/y"}
    for bad in (["a"], ["=x"], ["a=/x", "a=/y"]):
        with pytest.raises(UserInputError):
            parse_adapter_flags(bad)


@pytest.mark.parametrize("watch_cores", [True, False])
def test_the_engine_decodes_on_the_cores_other_processes_leave(
    serve_runs, monkeypatch, watch_cores
):
    from openai import OpenAI

    from tunesmith import core_watch, serve
    from tunesmith.serve.thread import running

    looks: list[float] = []

    def counting_watch():  # a watch whose every look sees a busy neighbour take a core
        def clock() -> float:
            looks.append(1.0)
            return float(len(looks))

        busy = iter(range(0, 10_000, 2))
        return core_watch.CoreWatch(
            2, 2, clock=clock, own_cpu_s=lambda: 0.0, busy_s=lambda: float(next(busy)),
            set_threads=set_to.append,
        )  # fmt: skip

    set_to: list[int] = []
    monkeypatch.setattr(core_watch, "watch_cores", counting_watch)
    _, run_a, _ = serve_runs
    with running(serve(run_a, default_max_tokens=6, watch_cores=watch_cores)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.completions.create(model=run_a.name, prompt="count the", max_tokens=6)
    assert out.choices[0].text is not None
    if watch_cores:  # looked at its passes, gave a core away, and took it back on stopping
        assert len(looks) >= 2 and set_to[0] == 1 and set_to[-1] == 2
    else:
        assert looks == [] and set_to == []


@pytest.mark.parametrize("flag", ["--threads", "--max-batch"])
def test_serve_refuses_a_count_below_one_before_loading(serve_runs, flag, capsys):
    from tunesmith.cli import main

    _, run_a, _ = serve_runs
    assert main(["serve", str(run_a), flag, "-1"]) == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err
