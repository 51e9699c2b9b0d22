"""Packed attention's causal attention in one kernel call each way (``native/causal_attention.cpp``),
on AMX tiles and in AVX512-BF16 dot products (each where this CPU has it), against an fp64
reference and against torch's bf16 path (products through torch, softmax in fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.train.fastpath.conftest import PACKED_ROWS, node_names
from tunesmith.train.fastpath import fused_attention, kernel_choice, native, row_split

# (blocks, g, L, d): a bench pass's blocks; chunks that cross a group's end; a narrow head and
# fewer rows than two chunks; one key; a wide head with keys past 128; exactly one chunk.
SHAPES = [(24, 3, 100, 64), (3, 3, 83, 64), (2, 1, 37, 32), (5, 2, 1, 64), (4, 3, 130, 128),
          (1, 1, 32, 64)]  # fmt: skip


class _Path:
    """The kernel's two calls on one path: ``tiles`` (AMX) or the dot products."""

    def __init__(self, kernels, tiles: bool):
        self.kernels, self.tiles = kernels, tiles

    def forward(self, q, source, k, v, scale):
        return self.kernels.causal_attention(q, source, k, v, scale, tiles=self.tiles)

    def backward(self, grad, q, source, k, v, lse, scale):
        return self.kernels.causal_attention_backward(
            grad, q, source, k, v, lse, scale, tiles=self.tiles
        )


@pytest.fixture(params=["tiles", "dots"])
def path(request, cpu_kernels) -> _Path:
    """Each path this CPU runs: AMX tiles (native.amx()), AVX512-BF16 dot products."""
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    tiles = request.param == "tiles"
    if tiles and not native.amx():
        pytest.skip("no AMX-BF16 tiles on this CPU")
    if not tiles and not cpu_kernels.dp_ready():
        pytest.skip("no AVX512-BF16 on this CPU")
    return _Path(cpu_kernels, tiles)


@pytest.fixture
def fused(cpu_kernels):
    """The built kernels where the fast paths take the fused attention (tiles or dots)."""
    if cpu_kernels is None:
        pytest.skip(f"tunesmith's CPU kernels: {native.why_not()}")
    if not (native.amx() or native.bf16_dots()):
        pytest.skip("neither AMX tiles nor AVX512-BF16 on this CPU")
    return cpu_kernels


def _inputs(blocks, g, L, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(blocks, g * L, d, generator=gen).bfloat16()
    k = torch.randn(blocks, L, d, generator=gen).bfloat16()
    v = torch.randn(blocks, L, d, generator=gen).bfloat16()
    grad = torch.randn(blocks, g * L, d, generator=gen).bfloat16()
    return q, k, v, grad


def _hidden(rows: int, keys: int) -> torch.Tensor:
    """The layout's causal mask: query row r is slot r % keys and sees keys 0 .. r % keys."""
    return torch.arange(keys)[None, :] > (torch.arange(rows) % keys)[:, None]


def _attend(q, k, v, grad, scale, dtype):
    """Output and (dq, dk, dv): in fp64 (the reference), or bf16 as torch's path runs it."""
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    s = torch.bmm(q, k.transpose(1, 2)) * scale
    s = s.masked_fill(_hidden(q.shape[1], k.shape[1]), float("-inf"))
    p = torch.softmax(s, -1, dtype=torch.promote_types(dtype, torch.float32)).to(dtype)
    out = torch.bmm(p, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad.to(dtype)))


def _run(path, q, k, v, grad, scale, source=None):
    """The kernel on the layout's (blocks, g*L, d) q and its gradient, each slot its own row
    (or the rows ``source`` names); results in the layout's shape."""
    shape, d = q.shape, q.shape[-1]
    if source is None:
        source = torch.arange(q.shape[0] * q.shape[1])
    rows, grad_rows = _rows(q, source), _rows(grad, source)
    out, lse = path.forward(rows, source, k, v, scale)
    dq, dk, dv = path.backward(grad_rows, rows, source, k, v, lse, scale)
    placed = source >= 0

    def layout(x):
        back = torch.zeros(shape[0] * shape[1], d, dtype=x.dtype)
        return back.index_copy(0, placed.nonzero()[:, 0], x[source[placed]]).view(shape)

    return (layout(out), layout(dq), dk, dv), lse


def _rows(x, source):
    """The rows ``source`` reads, in their own order: row source[r] holds slot r's (padding
    slots, -1, have no row)."""
    flat = x.reshape(-1, x.shape[-1])
    placed = source >= 0
    rows = torch.empty(int(placed.sum()), x.shape[-1], dtype=x.dtype)
    rows[source[placed]] = flat[placed]
    return rows


def _error(got, want) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize(("blocks", "g", "L", "d"), SHAPES)
def test_kernel_is_as_close_to_fp64_as_torchs_bf16_path(path, blocks, g, L, d):
    q, k, v, grad = _inputs(blocks, g, L, d)
    scale = d**-0.5
    want = _attend(q, k, v, grad, scale, torch.float64)
    torch_path = _attend(q, k, v, grad, scale, torch.bfloat16)
    got, _ = _run(path, q, k, v, grad, scale)
    for name, g_, t_, w_ in zip(("out", "dq", "dk", "dv"), got, torch_path, want, strict=True):
        if not w_.abs().max():  # one key: the scores' gradients are exactly 0
            assert not g_.abs().max(), name
            continue
        assert _error(g_, w_) <= max(1.25 * _error(t_, w_), 2.0**-9), name


@pytest.mark.parametrize(("blocks", "g", "L", "d"), SHAPES[:3])
def test_lse_is_the_log_sum_exp_of_each_querys_seen_scores(path, blocks, g, L, d):
    q, k, v, grad = _inputs(blocks, g, L, d)
    _, lse = _run(path, q, k, v, grad, 0.125)
    s = torch.bmm(q.double(), k.double().transpose(1, 2)) * 0.125
    want = s.masked_fill(_hidden(g * L, L), float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse.double(), want, rtol=1e-5, atol=1e-5)


def test_a_query_reads_no_key_past_its_own_slot(path):
    """Changing the last key and value leaves every query before that slot, and every key and
    value gradient but theirs, exactly as they were (the chunks skip the keys none sees)."""
    q, k, v, grad = _inputs(2, 3, 70, 64)
    before, _ = _run(path, q, k, v, grad, 0.125)
    k2, v2 = k.clone(), v.clone()
    k2[:, -1] *= 3
    v2[:, -1] = -v2[:, -1]
    after, _ = _run(path, q, k2, v2, grad, 0.125)
    blind = _hidden(3 * 70, 70)[:, -1]  # the queries that do not see the last key
    for name, b, a in zip(("out", "dq"), before[:2], after[:2], strict=True):
        assert torch.equal(b[:, blind], a[:, blind]), name
        assert not torch.equal(b[:, ~blind], a[:, ~blind]), name  # the others do change
    assert not torch.equal(before[2][:, :-1], after[2][:, :-1])  # dk: the change reaches q's side


def _as_zero_queries(path, source, blocks, g, L, d=64):
    """Slots read through ``source`` (padding: -1) against every slot its own row with zero
    queries and gradients at the padding: equal outputs and query gradients at the slots that
    hold a query, equal key and value gradients, and an lse of 0 at the padding."""
    q, k, v, grad = _inputs(blocks, g, L, d)
    placed = source >= 0
    source = source.clone()
    source[placed] = torch.argsort(torch.argsort(source[placed]))  # rows 0 .. n-1
    padding = (~placed).view(blocks, g * L)
    q[padding], grad[padding] = 0, 0  # what the layout's padding slots hold
    want, want_lse = _run(path, q, k, v, grad, 0.125)
    got, lse = _run(path, q, k, v, grad, 0.125, source)
    assert torch.equal(lse[~padding], want_lse[~padding])
    assert torch.equal(lse[padding], torch.zeros(int(padding.sum())))
    for name, g_, w_ in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        if name in ("out", "dq"):  # a padding slot's output is no row's: compare the rest
            g_, w_ = g_[~padding], w_[~padding]
        assert torch.equal(g_, w_), name


def test_queries_are_read_and_written_in_the_rows_the_slots_name(path):
    """Rows in another order than the slots, and padding slots (-1) that read zeros: the same
    results as each slot's own row with zeros at the padding."""
    source = torch.randperm(3 * 135, generator=torch.Generator().manual_seed(3))
    source[torch.tensor([5, 44, 140, 300])] = -1  # padding slots
    _as_zero_queries(path, source, 3, 3, 45)


@pytest.mark.parametrize("lengths", [(70, 20, 45), (70, 1, 33), (64, 64, 31)])
def test_examples_shorter_than_their_block_compute_only_their_own_slots(path, lengths):
    """A block is padded to its longest example: chunks of padding slots only, chunks that end
    in padding and chunks that cross into the next query group (which see only their queries'
    keys) give the results of zero queries at the padding."""
    L, g = 70, 3
    position = torch.arange(g * L) % L
    source = torch.cat([torch.where(position < n, 0, -1) for n in lengths])
    source[source >= 0] = torch.arange(int((source >= 0).sum()))
    _as_zero_queries(path, source, len(lengths), g, L)


def test_bad_inputs_are_refused_with_the_reason(path):
    q, k, v, grad = _inputs(2, 3, 40, 64)
    rows, source = q.view(-1, 64), torch.arange(240)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        narrow = [x[..., :48].contiguous() for x in (rows, k, v)]
        path.forward(narrow[0], source, narrow[1], narrow[2], 0.125)
    with pytest.raises(RuntimeError, match="whole groups"):
        path.forward(rows[:200], source[:200], k, v, 0.125)
    with pytest.raises(RuntimeError, match="reads row"):
        path.forward(rows, torch.where(source == 7, 240, source), k, v, 0.125)
    with pytest.raises(RuntimeError, match="one slot"):
        path.forward(rows, torch.where(source == 7, -1, source), k, v, 0.125)
    with pytest.raises(RuntimeError, match="bf16"):
        path.forward(rows.float(), source, k, v, 0.125)
    with pytest.raises(RuntimeError, match="positive"):
        path.forward(rows, source, k, v, -0.125)
    _, lse = path.forward(rows, source, k, v, 0.125)
    with pytest.raises(RuntimeError, match="lse"):
        path.backward(grad.view(-1, 64), rows, source, k, v, lse[:, 1:].contiguous(), 0.125)


@pytest.mark.parametrize("positions", PACKED_ROWS)
def test_packed_rows_take_the_kernel_and_attend_as_eager(fused, packed_pass, positions):
    """As close to fp64 attention under the block mask as torch's bf16 path with the kernels
    off (the scores rounded to bf16, the softmax in fp32)."""
    out, grads = packed_pass(positions, "1")
    assert "_FusedAttentionBackward" in node_names(out.grad_fn)
    eager_out, eager_grads = packed_pass(positions, "0")
    want_out, want_grads = packed_pass(positions, "0", dtype=torch.float64)
    for got, eager, want in zip(
        (out, *grads), (eager_out, *eager_grads), (want_out, *want_grads), strict=True
    ):
        assert _error(got, want) <= max(1.25 * _error(eager, want), 2.0**-9)


def test_a_recorder_of_dispatched_products_sees_torchs_attention(fused, packed_pass):
    with row_split.through_torch():
        out, _ = packed_pass([p for n in (30, 12) for p in range(n)], "1")
    names = node_names(out.grad_fn)
    assert "_FusedAttentionBackward" not in names and "BmmBackward0" in names


def test_tiles_and_dots_give_the_same_values(cpu_kernels):
    """Where both run (an AMX CPU): every product is exact in fp32 on either, so only the order
    of their sums differs, well within one bf16 rounding."""
    if cpu_kernels is None or not native.amx():
        pytest.skip("needs AMX tiles (and so AVX512-BF16) on this CPU")
    q, k, v, grad = _inputs(3, 3, 83, 64)
    tiles, lse_t = _run(_Path(cpu_kernels, True), q, k, v, grad, 0.125)
    dots, lse_d = _run(_Path(cpu_kernels, False), q, k, v, grad, 0.125)
    torch.testing.assert_close(lse_d, lse_t, rtol=1e-5, atol=1e-5)
    for name, d_, t_ in zip(("out", "dq", "dk", "dv"), dots, tiles, strict=True):
        assert _error(d_, t_) <= 2.0**-8, name


def test_the_kernel_needs_a_head_width_of_32s_and_tiles_or_dots(monkeypatch):
    q = torch.zeros(2, 30, 64, dtype=torch.bfloat16)
    assert fused_attention.runs(q, q, q, 0.125) == (native.amx() or native.bf16_dots())
    assert not fused_attention.runs(*[q[..., :48]] * 3, 0.125)
    assert not fused_attention.runs(q.float(), q.float(), q.float(), 0.125)
    monkeypatch.setattr(native, "amx", lambda: False)
    monkeypatch.setattr(native, "bf16_dots", lambda: False)  # an AVX2 CPU
    assert not fused_attention.runs(q, q, q, 0.125)


def test_the_fast_path_takes_the_tiles_where_amx_runs_else_the_dots(
    fused, packed_pass, monkeypatch
):
    """The tiles on an AMX CPU (measured there), the dot products on any other with AVX512-BF16."""
    calls = []
    real = fused.causal_attention

    class Spy:
        def __getattr__(self, name):
            return getattr(fused, name)

        def causal_attention(self, *args, **kwargs):
            calls.append(kwargs["tiles"])
            return real(*args, **kwargs)

    monkeypatch.setattr(native, "kernels", lambda: Spy())
    packed_pass([p for n in (30, 12) for p in range(n)], "1")
    assert calls and set(calls) == {native.amx()}


@pytest.mark.parametrize("measured", ["tiles", "dots"])
def test_on_an_amx_cpu_the_fast_path_takes_the_path_measured_for_its_layout(
    fused, packed_pass, monkeypatch, tmp_path, measured
):
    """Both paths run on an AMX CPU: a large enough call takes the one measured faster there
    (``kernel_choice``), forward and backward."""
    if not native.amx():
        pytest.skip("one path (the dot products) without AMX tiles")
    monkeypatch.setattr(kernel_choice, "_CHOICES", kernel_choice.Choices(tmp_path / "c.json"))
    monkeypatch.setattr(kernel_choice, "worth_measuring", lambda rows, width: True)
    monkeypatch.setattr(kernel_choice.Choices, "measure", lambda *a, **kw: measured)
    calls = []

    class Spy:
        def __getattr__(self, name):
            fn = getattr(fused, name)
            if name.startswith("causal_attention"):
                return lambda *a, **kw: calls.append(kw["tiles"]) or fn(*a, **kw)
            return fn

    monkeypatch.setattr(native, "kernels", lambda: Spy())
    out, _ = packed_pass([p for n in (30, 12) for p in range(n)], "1")
    assert calls and set(calls) == {measured == "tiles"}


def test_without_amx_the_dot_products_run_unmeasured(monkeypatch, tmp_path):
    choices = kernel_choice.Choices(tmp_path / "c.json")
    monkeypatch.setattr(kernel_choice, "_CHOICES", choices)
    monkeypatch.setattr(native, "amx", lambda: False)
    q, k = torch.zeros(4096, 64, dtype=torch.bfloat16), torch.zeros(24, 100, 64).bfloat16()
    assert not fused_attention._on_tiles(q, None, k, k, 0.125)
    assert choices.memo == {} and not choices.path.exists()
