"""Frozen GEMMs in row blocks: the cut equals the whole product, is measured once per shape,
and is kept for the machine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tunesmith.train.fastpath import row_split
from tunesmith.train.fastpath.row_split import RowSplits, candidates


def test_candidates_are_the_whole_product_512_row_blocks_and_two_halves():
    assert candidates(608) == [0, 512, 304]
    assert candidates(608, amx=True) == [0, 512, 304, row_split.AMX]  # and the AMX kernel
    assert candidates(300) == [0, 150]
    assert candidates(1024) == [0, 512]  # halves are 512-row blocks there
    assert [(s.start, s.stop) for s in row_split._blocks(608, 512)] == [(0, 512), (512, 608)]
    assert [(s.start, s.stop) for s in row_split._blocks(608, 0)] == [(0, 608)]


def _operands(dtype, rows=600, k=96, n=80, transposed=True):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    return a, (w.t() if transposed else w.t().contiguous())


@pytest.fixture
def forced(monkeypatch):
    """Every product qualifies and measures as fastest in 256-row blocks; measurements counted."""
    calls = []
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(row_split, "_measure", lambda a, b: calls.append(a.shape) or 256)
    return calls


@pytest.mark.parametrize("transposed", [True, False], ids=["W.t()", "row-major"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_blocks_equal_the_whole_product(forced, transposed, dtype, tol):
    a, b = _operands(dtype, transposed=transposed)
    rows = RowSplits(None)
    bias = torch.randn(b.shape[1]).to(dtype)
    c = torch.randn(a.shape[0], b.shape[1]).to(dtype)
    want_mm, want_bias, want_c = a @ b, torch.addmm(bias, a, b), torch.addmm(c, a, b)
    for got, want in [
        (rows.mm(a, b), want_mm),
        (rows.addmm(bias, a, b), want_bias),
        (rows.addmm(c, a, b), want_c),
        (rows.addmm_(c.clone(), a, b), want_c),  # in place, block by block
    ]:
        assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert rows.height(a, b) == 256
    assert len(forced) == 1  # one measurement per shape, then the kept choice


def test_a_choice_is_kept_for_the_machine_and_read_back(forced, tmp_path):
    path = tmp_path / "row-split" / "cpu.json"
    a, b = _operands(torch.float32)
    assert RowSplits(path).height(a, b) == 256
    saved = json.loads(path.read_text())
    assert list(saved.values()) == [256]
    assert next(iter(saved)).startswith("608x96x80t-torch.float32-")  # rows keyed per 32
    # A second process reads the choice instead of measuring again.
    assert RowSplits(path).height(a[:590], b) == 256
    assert len(forced) == 1


def test_an_unreadable_table_is_measured_again_and_rewritten(forced, tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text("{not json")
    a, b = _operands(torch.float32)
    assert RowSplits(path).height(a, b) == 256
    assert len(forced) == 1 and json.loads(path.read_text())


def test_an_unwritable_cache_never_fails_the_product(forced, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    a, b = _operands(torch.float32)
    rows = RowSplits(blocked / "sub" / "cpu.json")  # its parent is a file: cannot be made
    torch.testing.assert_close(rows.mm(a, b), a @ b)


def test_turned_off_or_too_small_products_are_never_measured(monkeypatch, tmp_path):
    path = tmp_path / "cpu.json"
    measured = []
    monkeypatch.setattr(row_split, "_measure", lambda a, b: measured.append(1) or 256)
    a, b = _operands(torch.float32)  # 96 x 80 weight: below MIN_WEIGHT
    assert RowSplits(path).height(a, b) == 0
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setenv(row_split.ENV, "0")
    assert RowSplits(path).height(a, b) == 0
    assert not measured and not path.exists()


def test_a_product_met_again_reads_its_answer_and_the_switch_still_decides(
    forced, monkeypatch, tmp_path
):
    rows = RowSplits(tmp_path / "cpu.json")
    a, b = _operands(torch.float32)
    monkeypatch.setenv(row_split.ENV, "0")
    assert rows.height(a, b) == 0 and not forced  # off: not measured, nor remembered as 0
    monkeypatch.setenv(row_split.ENV, "1")
    assert rows.height(a, b) == 256 and len(forced) == 1
    monkeypatch.setattr(rows, "key", None)  # met again: no key, no table
    assert rows.height(a, b) == 256 and len(forced) == 1
    monkeypatch.setenv(row_split.ENV, "0")
    assert rows.height(a, b) == 0  # a remembered cut is not taken while the switch is off


@pytest.mark.parametrize(
    ("costs", "want"),
    [
        ({0: 1.0, 512: 0.97, 304: 0.99}, 0),  # within the noise margin: the whole product
        ({0: 1.0, 512: 0.70, 304: 0.80}, 512),
        ({0: 1.0, 512: 0.90, 304: 0.60}, 304),
    ],
)
def test_measurement_picks_a_cut_only_when_it_is_clearly_faster(monkeypatch, costs, want):
    clock = [0.0]
    monkeypatch.setattr(row_split, "_clock", lambda: clock[0])

    def product(a, b, height, out=None):  # each call advances the clock by its candidate's cost
        clock[0] += costs[height]

    monkeypatch.setattr(row_split, "_mm", product)
    a, b = _operands(torch.float32, rows=608)
    assert row_split._measure(a, b) == want


def test_the_amx_kernel_is_chosen_only_when_it_is_clearly_faster(monkeypatch):
    clock = [0.0]
    costs = {0: 1.0, 512: 0.9, 304: 0.8, row_split.AMX: 0.6}
    monkeypatch.setattr(row_split, "_clock", lambda: clock[0])
    monkeypatch.setattr(
        row_split, "_mm", lambda a, b, h, out=None: clock.__setitem__(0, clock[0] + costs[h])
    )
    monkeypatch.setattr(row_split, "amx_takes", lambda a, b: True)
    built = SimpleNamespace(evict=lambda t: True)
    monkeypatch.setattr(row_split.native, "kernels", lambda: built)
    a, b = _operands(torch.float32, rows=608)
    assert row_split._measure(a, b) == row_split.AMX
    monkeypatch.setattr(row_split.native, "kernels", lambda: None)  # switched off: not a candidate
    assert row_split._measure(a, b) == 304


def test_each_timed_call_meets_an_evicted_weight_and_a_new_evicted_output(monkeypatch):
    """As a step meets them (module doc); the warm-up call that builds a primitive is not timed
    and evicts nothing."""
    events = []

    class Kernels:
        @staticmethod
        def evict(t):
            events.append(("evict", t.data_ptr(), tuple(t.shape)))
            return True

    def product(a, b, height, out=None):
        events.append(("product", height, None if out is None else out.data_ptr()))
        return row_split._blocks(a.shape[0], height)  # nothing computed: only the order counts

    monkeypatch.setattr(row_split.native, "kernels", lambda: Kernels)
    monkeypatch.setattr(row_split, "amx_takes", lambda a, b: False)
    monkeypatch.setattr(row_split, "_mm", product)
    a, b = _operands(torch.float32, rows=608)
    row_split._measure(a, b)
    events[:] = [e for e in events if e[2] != (0,)]  # the probe whether evict works here
    timed = [i for i, e in enumerate(events) if e[0] == "product" and e[2] is not None]
    assert len(timed) == len(candidates(608)) * row_split.REPEATS
    for i in timed:
        weight, out = events[i - 2], events[i - 1]
        assert weight == ("evict", b.data_ptr(), tuple(b.shape))
        assert out == ("evict", events[i][2], (608, b.shape[1]))
    untimed = [e for e in events if e[0] == "product" and e[2] is None]
    assert len(untimed) == len(candidates(608))  # one warm-up per candidate
    events.clear()
    monkeypatch.setattr(row_split.native, "kernels", lambda: None)  # not built: nothing evicts
    row_split._measure(a, b)
    assert events and all(e[0] == "product" for e in events)


def test_the_amx_kernel_takes_only_what_it_computes(monkeypatch):
    monkeypatch.setattr(row_split.native, "amx", lambda: True)
    a, b = _operands(torch.bfloat16, rows=64, k=64, n=96)
    assert row_split.amx_takes(a, b) and row_split.amx_takes(a, b.contiguous())
    assert not row_split.amx_takes(a.float(), b.float())  # bf16 only
    assert not row_split.amx_takes(a[:, :48], b[:48])  # K a multiple of 32
    assert not row_split.amx_takes(a, b[:, :80])  # N a multiple of 32
    assert not row_split.amx_takes(a.t().contiguous().t(), b)  # a's rows contiguous
    monkeypatch.setattr(row_split.native, "amx", lambda: False)  # no tiles here
    assert not row_split.amx_takes(a, b)


@pytest.fixture
def amx_chosen(monkeypatch, cpu_kernels):
    """A CPU with AMX tiles where every qualifying product measured fastest in the kernel."""
    if cpu_kernels is None or not row_split.native.amx():
        pytest.skip("no AMX-BF16 tiles, or tunesmith's CPU kernels are not built")
    monkeypatch.setattr(row_split, "MIN_ROWS", 8)
    monkeypatch.setattr(row_split, "MIN_WEIGHT", 1)
    monkeypatch.setattr(
        row_split, "_measure", lambda a, b: row_split.AMX if row_split.amx_takes(a, b) else 0
    )


@pytest.mark.parametrize("transposed", [True, False], ids=["W.t()", "row-major"])
def test_products_in_the_amx_kernel_equal_torchs_within_a_rounding(amx_chosen, transposed):
    a, b = _operands(torch.bfloat16, rows=200, k=96, n=64, transposed=transposed)
    rows = RowSplits(None)
    bias = torch.randn(b.shape[1]).bfloat16()
    c = torch.randn(a.shape[0], b.shape[1]).bfloat16()
    assert rows.height(a, b) == row_split.AMX and rows.key(a, b).endswith("-amx")
    for got, want in [
        (rows.mm(a, b), a @ b),
        (rows.addmm(bias, a, b), torch.addmm(bias, a, b)),
        (rows.addmm(c, a, b), torch.addmm(c, a, b)),
        (rows.addmm_(c.clone(), a, b), torch.addmm(c, a, b)),
    ]:
        assert got.shape == want.shape and got.dtype == torch.bfloat16 and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_a_product_the_kernel_cannot_read_keeps_torchs_after_one_it_could(amx_chosen):
    a, b = _operands(torch.bfloat16, rows=64, k=96, n=64)
    rows = RowSplits(None)
    assert rows.height(a, b) == row_split.AMX
    strided = a.t().contiguous().t()  # same shape, columns not contiguous
    assert rows.height(strided, b) == 0  # another signature: its own (torch's) choice
    torch.testing.assert_close(rows.mm(strided, b), a @ b)


def test_a_recorder_of_dispatched_ops_sees_the_amx_products_through_torch(amx_chosen, monkeypatch):
    from tunesmith.bench.train.gemm_limit import Gemm, record_gemms

    a, b = _operands(torch.bfloat16, rows=64, k=96, n=64)
    rows = RowSplits(None)
    assert not record_gemms(lambda: rows.mm(a, b))  # the kernel's product is not dispatched
    with row_split.through_torch():
        seen = record_gemms(lambda: rows.mm(a, b))
    assert seen == {Gemm(1, 64, 64, 96, torch.bfloat16, b_t=True): 1}
    monkeypatch.setenv(row_split.native.ENV, "0")  # the kernels off: torch's product
    assert record_gemms(lambda: rows.mm(a, b))


def test_the_table_is_per_cpu_and_onednn_isa_cap(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    plain = row_split.table_path()
    assert plain.parent == tmp_path / "row-split"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # AMX off: other kernels
    assert row_split.table_path() != plain


def test_the_table_is_per_way_of_measuring(monkeypatch, tmp_path):
    """Choices timed on cached operands (without the kernels) are not read as ones timed from
    memory."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    monkeypatch.setattr(row_split.native, "amx", lambda: False)
    monkeypatch.setattr(row_split.native, "kernels", lambda: None)
    warm = row_split.table_path()
    built = SimpleNamespace(evict=lambda t: False)  # built where nothing can be evicted
    monkeypatch.setattr(row_split.native, "kernels", lambda: built)
    assert row_split.table_path() == warm
    built.evict = lambda t: True
    assert row_split.table_path() != warm


def test_the_table_is_per_build_of_the_amx_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    monkeypatch.setattr(row_split.native, "amx", lambda: True)
    monkeypatch.setattr(row_split.native, "extension_name", lambda: "tunesmith_cpu_a")
    first = row_split.table_path()
    monkeypatch.setattr(row_split.native, "extension_name", lambda: "tunesmith_cpu_b")
    assert row_split.table_path() != first  # a changed kernel is timed again
    monkeypatch.setattr(row_split.native, "amx", lambda: False)
    without = row_split.table_path()
    monkeypatch.setattr(row_split.native, "extension_name", lambda: "tunesmith_cpu_c")
    assert row_split.table_path() == without  # no tiles: the kernel's build does not matter
