"""core_watch: CPU training and generation run on the cores other processes leave free."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from tests.train.fastpath.test_apply import _lora
from tunesmith import core_watch
from tunesmith.core_watch import INTERVAL_S, CoreWatch, threads_for
from tunesmith.train.fastpath import FastPaths, apply_fast_paths


def test_a_core_is_left_for_each_started_core_the_others_use():
    assert threads_for(0.0, cores=2, most=2) == 2
    assert threads_for(0.5, cores=2, most=2) == 2  # half a core: a sampler, a shell
    assert threads_for(0.6, cores=2, most=2) == 1
    assert threads_for(1.9, cores=2, most=2) == 1  # never fewer than one
    assert threads_for(3.2, cores=16, most=16) == 13
    assert threads_for(0.0, cores=16, most=8) == 8  # never more than the run's own


class _Machine:
    """A clock, this process's CPU seconds and the machine's busy seconds, moved by hand."""

    def __init__(self):
        self.t = self.own = self.busy = 0.0
        self.set_to: list[int] = []

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.t += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def watch(self, most: int = 2, cores: int = 2) -> CoreWatch:
        return CoreWatch(
            most, cores, clock=lambda: self.t, own_cpu_s=lambda: self.own,
            busy_s=lambda: self.busy, set_threads=self.set_to.append,
        )  # fmt: skip


def test_gives_a_core_away_while_another_process_needs_it_and_takes_it_back():
    m = _Machine()
    w = m.watch()
    assert w.look() is None  # the first look starts the window
    m.run(0.4, own_cores=2.0, other_cores=0.0)
    assert w.look() is None and w.others is None  # shorter than a window: no look
    m.run(INTERVAL_S, own_cores=1.5, other_cores=0.9)
    assert w.look() == 1 and w.others == pytest.approx(0.9 / 1.4)  # over the window
    assert m.set_to == [1] and w.threads == 1
    m.run(2.0, own_cores=1.0, other_cores=1.0)
    assert w.look() is None  # still needed: nothing to change
    m.run(2.0, own_cores=1.0, other_cores=0.1)
    assert w.look() == 2 and m.set_to == [1, 2]
    m.run(2.0, own_cores=2.0, other_cores=0.9)
    assert w.look() == 1
    w.restore()  # the loop ended: the run's own count again
    assert m.set_to == [1, 2, 1, 2] and w.threads == 2 and w.changes == 3


def test_a_machine_without_proc_stat_is_never_changed():
    m = _Machine()
    w = CoreWatch(2, 2, clock=lambda: m.t, busy_s=lambda: None, set_threads=m.set_to.append)
    for _ in range(3):
        m.run(2.0, own_cores=0.0, other_cores=2.0)
        assert w.look() is None
    assert m.set_to == []


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_sees_a_real_busy_process_beside_this_one():
    m = _Machine()
    w = CoreWatch(2, os.cpu_count() or 2, set_threads=m.set_to.append)
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the rival is running
        w.look()
        time.sleep(INTERVAL_S + 0.3)  # this process sleeps: what ran was someone else
        w.look()
    finally:
        rival.kill()
        rival.wait()
    assert w.others is not None and w.others >= 0.5
    if (os.cpu_count() or 2) <= 2 and w.others > 0.5:
        assert m.set_to == [1]  # one of two cores left to the rival


def test_the_fast_paths_watch_only_threads_tunesmith_chose(monkeypatch):
    monkeypatch.delenv(core_watch.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = apply_fast_paths(_lora(), torch.device("cpu"))
        assert isinstance(fast.watch, CoreWatch) and fast.watch.most == 2
        assert apply_fast_paths(_lora(), torch.device("cpu"), own_threads=True).watch is None
        assert apply_fast_paths(_lora(), torch.device("cuda")).watch is None
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count, as --threads is
        assert apply_fast_paths(_lora(), torch.device("cpu")).watch is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv(core_watch.ENV, "0")
        assert apply_fast_paths(_lora(), torch.device("cpu")).watch is None
        torch.set_num_threads(1)
        monkeypatch.delenv(core_watch.ENV)
        assert apply_fast_paths(_lora(), torch.device("cpu")).watch is None  # nothing to give
    finally:
        torch.set_num_threads(before)


def _peft_tiny():
    from peft import LoraConfig, get_peft_model

    from tests.tiny import make_tiny_model

    return get_peft_model(
        make_tiny_model("llama", attn_implementation="eager"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )


def test_every_forward_pass_asks_the_watch_until_undo():
    m = _Machine()
    model = _peft_tiny()
    ids = torch.tensor([[1, 2, 3]])
    fast = FastPaths()
    fast.attach_watch(model, m.watch())
    model(input_ids=ids)  # the first look starts the window
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    fast.after_step()  # the loop's own call no longer looks: the passes do
    assert m.set_to == []
    model(input_ids=ids)
    assert m.set_to == [1]
    with pytest.raises(KeyboardInterrupt), fast.training():
        raise KeyboardInterrupt  # the loop stopped, however: evaluation and the next start at 2
    assert m.set_to == [1, 2] and fast.watch is not None
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    model(input_ids=ids)
    fast.undo()
    assert m.set_to == [1, 2, 1, 2] and fast.watch is None
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    model(input_ids=ids)  # the hook went with undo()
    assert m.set_to == [1, 2, 1, 2]


def test_a_model_without_input_embeddings_is_watched_at_its_own_forward():
    m = _Machine()
    w = m.watch()
    layer = torch.nn.Linear(2, 2)
    handle = w.watch_forwards(layer)
    layer(torch.ones(1, 2))
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    layer(torch.ones(1, 2))
    assert m.set_to == [1]
    handle.remove()


def test_generation_asks_the_watch_at_every_new_token_and_generates_the_same():
    from tests.tiny import make_tokenizer
    from tunesmith.eval.generate import generate

    tok = make_tokenizer()
    model = _peft_tiny()
    prompts = ["count the patients", "which city"]
    alone = [g.text for g in generate(model, tok, prompts, max_new_tokens=6, batch_size=2)]
    m = _Machine()
    looks = []

    def clock() -> float:  # each pass takes a window in which another process took a core
        looks.append(m.t)
        m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
        return m.t

    watch = CoreWatch(
        2, 2, clock=clock, own_cpu_s=lambda: m.own, busy_s=lambda: m.busy,
        set_threads=m.set_to.append,
    )  # fmt: skip
    FastPaths().attach_watch(model, watch)
    shared = [g.text for g in generate(model, tok, prompts, max_new_tokens=6, batch_size=2)]
    assert shared == alone
    assert len(looks) >= 6  # the prompt's pass and one per generated token (up to a stop)
    assert m.set_to == [1] and watch.threads == 1


def test_a_training_loop_gives_the_threads_back_when_it_stops(tmp_path):
    from tests.tiny import make_tokenizer
    from tests.train.test_loop import _varied_examples
    from tunesmith.train.loop import TrainLoop
    from tunesmith.train.settings import LoopSettings

    m = _Machine()

    def busy_neighbour(_row) -> None:  # before each step's look: another process took a core
        m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)

    tok = make_tokenizer()
    settings = LoopSettings(max_steps=3, batch_size=4, lr=1e-3, warmup_ratio=0.0, logging_steps=1)
    model = _peft_tiny()
    fast = FastPaths()
    fast.attach_watch(model, m.watch())
    loop = TrainLoop(
        model, _varied_examples(tok), tok.pad_token_id, settings, tmp_path,
        torch.device("cpu"), fast_paths=fast, on_log=busy_neighbour,
    )  # fmt: skip
    loop.train()
    assert m.set_to[0] == 1  # given away during the run
    assert m.set_to[-1] == 2 and fast.watch.threads == 2  # and back when the loop stopped


def test_watching_looks_at_the_passes_inside_and_gives_the_count_back(monkeypatch):
    m = _Machine()
    model = _peft_tiny()
    ids = torch.tensor([[1, 2, 3]])
    monkeypatch.setattr(core_watch, "watch_cores", m.watch)
    with core_watch.watching(model) as watch:
        model(input_ids=ids)
        m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
        model(input_ids=ids)
        assert m.set_to == [1] and watch.threads == 1
    assert m.set_to == [1, 2]  # the process's own count on the way out
    m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
    model(input_ids=ids)  # and no hook left behind
    assert m.set_to == [1, 2]


def test_watching_nothing_where_the_count_is_the_users_or_the_model_not_on_cpu(monkeypatch):
    monkeypatch.delenv(core_watch.ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with core_watch.watching(torch.nn.Linear(2, 2)) as watch:
            assert watch is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        with core_watch.watching(torch.nn.Module()) as watch:  # no parameters: no device
            assert watch is None
        with core_watch.watching(torch.nn.Linear(2, 2).to("meta")) as watch:
            assert watch is None
    finally:
        torch.set_num_threads(before)


def test_a_run_gives_the_threads_back_after_its_evaluations(tmp_path, tiny_llama_dir, monkeypatch):
    from tests.compare.test_search_parts import _demo
    from tunesmith.config import make_config
    from tunesmith.train import fastpath
    from tunesmith.train.run import run_training

    m = _Machine()

    def clock() -> float:  # each pass takes a window in which another process took a core
        m.run(INTERVAL_S, own_cores=1.0, other_cores=1.0)
        return m.t

    def busy_watch() -> CoreWatch:
        return CoreWatch(
            2, 2, clock=clock, own_cpu_s=lambda: m.own, busy_s=lambda: m.busy,
            set_threads=m.set_to.append,
        )  # fmt: skip

    monkeypatch.setattr(fastpath, "watch_cores", busy_watch)
    raw, evals = _demo(tmp_path)
    cfg = make_config(
        {"model": str(tiny_llama_dir), "max-steps": 2, "batch-size": 4, "data": [str(raw)],
         "eval-data": str(evals), "eval-limit": 2, "max-new-tokens": 3, "skip-base-eval": True,
         "output": str(tmp_path / "run")}
    )  # fmt: skip
    run_training(cfg, say=lambda msg: None)
    # Given away in training, back when the loop stopped, given away in the evaluation, and
    # back when the run ended (a compare's next method or a notebook's next run starts at 2).
    assert m.set_to[:2] == [1, 2] and m.set_to[-2:] == [1, 2] and len(m.set_to) >= 4
