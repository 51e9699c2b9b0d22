"""The measured choice between a kernel's interchangeable paths (``kernel_choice``), and the LoRA
node running the path chosen for its shape."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.tiny import make_tiny_model
from tunesmith.train.fastpath import kernel_choice, lora_linear, native
from tunesmith.train.fastpath.lora import install
from tunesmith.train.speed import compute_context

_LARGE, _SMALL = (lambda: True), (lambda: False)  # whether a call is worth measuring


class _Clock:
    """A clock that each path's call moves on by that path's cost (deterministic timings)."""

    def __init__(self, monkeypatch, costs: dict[str, float]):
        self.now, self.costs, self.calls = 0.0, costs, []
        monkeypatch.setattr(kernel_choice, "_clock", lambda: self.now)

    def paths(self) -> dict:
        return {name: (lambda name=name: self._run(name)) for name in self.costs}

    def _run(self, name: str) -> None:
        self.calls.append(name)
        self.now += self.costs[name]


@pytest.fixture
def table(monkeypatch, tmp_path):
    """This process's choices in a file of the test's own."""
    choices = kernel_choice.Choices(tmp_path / "choices.json")
    monkeypatch.setattr(kernel_choice, "_CHOICES", choices)
    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    return choices


def test_the_fastest_path_is_kept_and_saved_for_a_later_run(monkeypatch, table):
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    # each path: one warm-up call, then the best of REPEATS
    assert clock.calls.count("dots") == clock.calls.count("fp32") == 1 + kernel_choice.REPEATS
    saved = json.loads(table.path.read_text())
    assert saved == {"k|dots/fp32": "dots"}
    later = kernel_choice.Choices(table.path)  # another process on this machine
    assert later.known("k|dots/fp32") == "dots"
    clock.calls.clear()
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    assert clock.calls == []  # known: not measured again


@pytest.mark.parametrize(("other", "kept"), [(0.97, "fp32"), (0.9, "dots")])
def test_another_path_must_beat_the_default_by_the_margin(monkeypatch, table, other, kept):
    clock = _Clock(monkeypatch, {"fp32": 1.0, "dots": other})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == kept


def test_before_runs_ahead_of_every_timed_call(monkeypatch, table):
    clock = _Clock(monkeypatch, {"a": 1.0, "b": 2.0, "c": 3.0})
    seen = []
    table.measure("k", clock.paths(), "a", before=lambda: seen.append(len(clock.calls)))
    assert len(seen) == 3 * kernel_choice.REPEATS
    assert all(clock.calls[n - 1 : n] != [] for n in seen)  # after the warm-up call, never timed


def test_small_calls_one_path_or_the_switch_off_take_the_default_unmeasured(monkeypatch, table):
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _SMALL, clock.paths) == "fp32"
    assert kernel_choice.choose(("k",), ("fp32",), "fp32", _LARGE, clock.paths) == "fp32"
    monkeypatch.setenv(kernel_choice.ENV, "0")
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "fp32"
    assert clock.calls == [] and not table.path.exists()
    assert not kernel_choice.worth_measuring(kernel_choice.MIN_ROWS - 1, 10**4)
    assert not kernel_choice.worth_measuring(10**4, kernel_choice.MIN_WIDTH - 1)
    assert kernel_choice.worth_measuring(kernel_choice.MIN_ROWS, kernel_choice.MIN_WIDTH)


def test_the_switch_off_runs_the_default_even_where_another_was_measured(monkeypatch, table):
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    monkeypatch.setenv(kernel_choice.ENV, "off")
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "fp32"


def test_a_choice_is_per_set_of_paths_and_one_not_offered_now_is_not_taken(monkeypatch, table):
    clock = _Clock(monkeypatch, {"tiles": 1.0, "dots": 2.0, "fp32": 3.0})
    names = ("tiles", "dots", "fp32")
    assert kernel_choice.choose(("k",), names, "fp32", _LARGE, clock.paths) == "tiles"
    # the same shape where the tiles cannot run: measured apart, never the tiles
    del clock.costs["tiles"]
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    table.entries()["j|dots/fp32"] = "tiles"  # e.g. a file written by hand
    assert kernel_choice.choose(("j",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "fp32"


def test_a_path_that_refuses_the_call_is_never_taken(monkeypatch, table, caplog):
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})

    def refuses():
        raise RuntimeError("widths off the tiles")

    paths = lambda: {**clock.paths(), "tiles": refuses}  # noqa: E731
    names = ("tiles", "dots", "fp32")
    assert kernel_choice.choose(("k",), names, "fp32", _LARGE, paths) == "dots"
    assert "tiles failed" in caplog.text and "widths off the tiles" in caplog.text
    # the rule's own path failing is the call's error, not hidden
    with pytest.raises(RuntimeError, match="widths off the tiles"):
        kernel_choice.choose(("j",), names, "tiles", _LARGE, paths)


@pytest.mark.parametrize("content", ["{not json", '["a list"]', ""])
def test_an_unreadable_table_is_measured_again_and_rewritten(monkeypatch, table, content):
    table.path.write_text(content)
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    assert json.loads(table.path.read_text()) == {"k|dots/fp32": "dots"}


def test_a_table_that_cannot_be_written_never_fails_the_call(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    choices = kernel_choice.Choices(blocker / "choices.json")  # its folder is a file
    monkeypatch.setattr(kernel_choice, "_CHOICES", choices)
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    assert kernel_choice.choose(("k",), ("dots", "fp32"), "fp32", _LARGE, clock.paths) == "dots"
    assert choices.known("k|dots/fp32") == "dots"  # kept in this process


def test_the_summary_counts_this_processs_paths_per_kind_of_call(monkeypatch, table):
    assert kernel_choice.summary() is None  # no call had a choice yet
    clock = _Clock(monkeypatch, {"fp32": 2.0, "dots": 1.0})
    for key in (("lora-forward", 576), ("lora-forward", 1536), ("lora-backward", 576)):
        kernel_choice.choose(key, ("dots", "fp32"), "fp32", _LARGE, clock.paths)
    clock.costs["fp32"] = 0.5
    kernel_choice.choose(("lora-backward", 64), ("dots", "fp32"), "dots", _LARGE, clock.paths)
    assert kernel_choice.summary() == "lora-backward: 1 dots, 1 fp32; lora-forward: 2 dots"


def test_the_table_is_per_machine_and_kernels_build(monkeypatch):
    first = kernel_choice.table_path()
    assert first.parent.name == "kernel-choice"
    monkeypatch.setattr(native, "extension_name", lambda: "tunesmith_cpu_another")
    assert kernel_choice.table_path() != first
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert kernel_choice.machine_ident().endswith(f"|AVX2|{torch.__version__}")


# --- the LoRA node -------------------------------------------------------------------------


def _bf16_step(model, ids) -> None:
    """One forward + backward as tunesmith trains in bf16 (autocast over fp32 adapters)."""
    with compute_context(model, torch.device("cpu"), torch.bfloat16, True):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()


def _lora_model():
    torch.manual_seed(0)
    model = make_tiny_model().to(torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    model = get_peft_model(model, config).train()  # adapter weights fp32, as peft upcasts them
    install(model)
    return model


@pytest.fixture
def large_node(monkeypatch, table):
    """A tiny model's q/k/v LoRA nodes, taken as large enough to measure; (model, input ids,
    the (pass, bf16_dots) of each LoRA kernel call)."""
    kernels = native.kernels()
    if kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    if not native.bf16_dots():
        pytest.skip("no AVX512-BF16 here: the LoRA passes have one path")
    flags: list = []

    class Spy:  # records each LoRA pass's bf16_dots
        def __getattr__(self, name):
            fn = getattr(kernels, name)
            if not name.startswith("lora_"):
                return fn
            return lambda *a, **kw: flags.append((name, kw.get("bf16_dots"))) or fn(*a, **kw)

    monkeypatch.setattr(native, "kernels", Spy)
    monkeypatch.setattr(kernel_choice, "worth_measuring", lambda rows, width: True)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    return _lora_model(), ids, flags


@pytest.mark.parametrize("path", ["fp32", "dots"])
def test_the_lora_node_runs_the_path_chosen_for_its_shape(monkeypatch, large_node, path):
    model, ids, flags = large_node
    measured = []
    monkeypatch.setattr(
        kernel_choice.Choices,
        "measure",
        lambda self, key, paths, default, before=None: measured.append(key) or path,
    )
    _bf16_step(model, ids)
    kinds = {key.split("|")[0] for key in measured}
    assert kinds == {"lora-forward", "lora-backward", "lora-backward-dx"}
    assert all(key.endswith("|dots/fp32") for key in measured)
    assert flags and all(dots == (path == "dots") for _, dots in flags)


def test_a_large_lora_node_is_measured_once_on_its_real_operands(table, large_node):
    model, ids, flags = large_node
    _bf16_step(model, ids)
    saved = json.loads(table.path.read_text())
    # the layers' stacked q/k/v nodes share a shape: forward, backward, and the first layer's
    # backward without an input gradient (the embeddings do not train)
    assert sorted(k.split("|")[0] for k in saved) == [
        "lora-backward", "lora-backward-dx", "lora-forward"
    ]  # fmt: skip
    # each measured: each path once to warm up, then REPEATS timed calls, on the node's operands
    assert len(flags) == 3 * 2 * (1 + kernel_choice.REPEATS) + 4
    flags.clear()
    _bf16_step(model, ids)
    assert len(flags) == 4  # known now: the two layers' forward and backward passes only
    assert {dots for _, dots in flags} <= {choice == "dots" for choice in saved.values()}


def test_without_dot_products_the_lora_node_has_one_path(monkeypatch, table):
    monkeypatch.setattr(native, "bf16_dots", lambda: False)
    monkeypatch.setattr(native, "amx", lambda: False)
    x = torch.zeros(512, 576, dtype=torch.bfloat16)
    a, b = torch.zeros(4, 576), torch.zeros(576, 4)
    assert not lora_linear._forward_dots(None, None, x, (a,), (b,), (1.0,))
    g, h = torch.zeros(512, 576, dtype=torch.bfloat16), torch.zeros(512, 4, dtype=torch.bfloat16)
    assert lora_linear._backward_path(None, (g, h, x, (a,), (b,), (1.0,), True)) == (False, False)
    assert not table.path.exists()
