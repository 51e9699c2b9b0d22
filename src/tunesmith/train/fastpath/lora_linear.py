"""Frozen projections and their LoRA branches as one autograd function, for one or several
projections that read the same input.

peft computes a LoRA projection as ``base(x) + B(A(x)) * s``: the frozen base and the branch are
separate autograd nodes with a multiply by the scale and an add over the whole ``(tokens,
d_out)`` output, and the backward computes the input gradient twice (``g W`` and ``(g sB) A``)
and adds the two in one more pass over ``(tokens, d_in)``. A block's q, k and v projections then
run three GEMMs of which two (k and v, ``d_out`` = 192 on the demo model) are too narrow to use
AMX tiles well, and add three input gradients. Here one function does:

- forward: ``out = x Wᵀ (+ bias)``, then ``out += (x Aᵀ)(s B)ᵀ`` in place (one ``addmm_``), or,
  where the frozen product runs in tunesmith's AMX kernel (``row_split``'s measured choice),
  the branch as that product's low-rank extension: ``x Aᵀ`` and ``(s B)ᵀ``, their rank padded
  to 32, are more K steps of the same fp32 tile sums, rounded once with the product, and no
  pass over ``out`` adds them (a demo step ~1% faster; benchmarks/RESULTS.md, "Frozen products'
  outputs written past the cache");
- backward: ``dx = g W + (g sB) A``, ``g W`` accumulated in place into ``(g sB) A`` (one
  ``addmm_``), and the rank-r products for A and B.

Given k projections (q, k, v), ``W`` is their weights stacked (``(Σ d_out, d_in)``; the
modules' own weights are views into it, see :mod:`~tunesmith.train.fastpath.lora_siblings`),
``A`` their A's stacked and ``s B`` block-diagonal, so the k projections cost one wide GEMM each
way and one input gradient. The scale goes into the rank-r side before rounding; values equal
peft's within bf16 rounding (``tests/train/fastpath/test_lora.py`` pins the tolerance).
Measured per layer on the demo shapes (640 tokens, bf16, forward + backward, 2-core AMX CPU,
benchmarks/RESULTS.md "One autograd node per LoRA projection"): q/k/v together 0.60-0.67x the
time of three separate branches, ``down_proj`` 0.76-0.82x, ``o_proj`` 0.83-0.95x.

A branch with dropout (one projection) reads ``x`` through a mask drawn by
:class:`~tunesmith.train.fastpath.dropout.FastDropout`: the branch's input is ``x * m * c``
(``c = 1 / (1 - p)``, rounded once, as the dropout module rounds it) and its input gradient
``(g sB) A * m * c``, into which the frozen ``g W`` is accumulated in place. peft computes the
same with a separate dropout node, a multiply by the scale and an add over ``(tokens, d_out)``
each way, and one more add of the two input gradients over ``(tokens, d_in)``.

The rank-r products (``x Aᵀ``, the branch added into ``out``; backward ``g sB``, ``dh A`` and the
gradients of A and B) are small for oneDNN: ~900 products, ~16% of a demo step's time.
Where tunesmith's CPU kernels are built, they run in one pass over the rows each way
(``native.kernels().lora_forward_`` / ``lora_backward``), only ``sB``'s diagonal blocks
computed: a demo step 0.92x the time (benchmarks/RESULTS.md, "The LoRA branch's rank-r
products in one pass"); on a CPU with AVX512-BF16 and no AMX those passes sum in its bf16
dot products (:func:`_bf16_dots`, ``native/dp_lora.cpp``: the demo's LoRA kernels ~55 -> ~36
ms a step on the AMD EPYC; RESULTS.md, "The LoRA products in AVX512-BF16 dot products"), and on
an AMX CPU the backward's products run on the tiles from a rank of :data:`TILES_MIN_RANK` on
(``native/amx_lora.cpp``; RESULTS.md, "LoRA's backward products on AMX tiles"). Those are the
rules; where a node's pass has more than one path on this CPU and is large, the first call of
its shape times them and the fastest runs from then on
(:mod:`~tunesmith.train.fastpath.kernel_choice`; the same paths on the AMD EPYC, ~30 ms once on
the demo; RESULTS.md, "Kernel paths measured per machine"). The kernels
read A and B as the trained weights (fp32 under autocast) and give their gradients in those
dtypes, rounded as :func:`_rounded_sides` and :func:`_branch_grads` round them here, so such a
node runs no casts, stacking or slicing.
"""

from __future__ import annotations

import functools

import torch

from tunesmith.train.fastpath import kernel_choice, native, row_split
from tunesmith.train.fastpath.dropout import masked_scale
from tunesmith.train.fastpath.row_split import splits, tiles_take

# How many dispatch modes are active (torch's own count; 0 where a torch lacks it).
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_MASTER_DTYPES = (torch.float32, torch.bfloat16)  # what the kernels read A and B from
# The smallest rank (a node's ranks summed) whose backward runs on AMX tiles. The vector pass's
# work grows with the rank, the tiles' does not (ranks are padded to 16 or 32) but they pack the
# gradient and input once more: in a demo step's backward (480 rows, cold operands) the tiles
# took 1.07-1.15x the vector pass's time at rank 4, 0.86-0.91x at 8 and 12, 0.73-0.78x at 16 and
# 48 (benchmarks/RESULTS.md, "LoRA's backward products on AMX tiles").
TILES_MIN_RANK = 8


def _bf16_dots() -> bool:
    """The rule for a call whose path is not measured (small, or the switch off: see
    :mod:`~tunesmith.train.fastpath.kernel_choice`): the kernels' vector passes sum in AVX512-BF16
    dot products (``native/dp_lora.cpp``, where the CPU has them) rather than fp32 FMAs on CPUs
    without AMX. Measured on the AMD EPYC (Zen 4, no AMX): the demo's calls 0.43-0.54x the time,
    warm. On an AMX Xeon, whose FMA and dot-product units are balanced otherwise and whose
    tiles' rank rule (:data:`TILES_MIN_RANK`) was measured against the fp32 pass, the rule keeps
    the fp32 pass; a large call there times all three paths."""
    return not native.amx()


def _kernels(*tensors: torch.Tensor, weights: tuple[torch.Tensor, ...]):
    """tunesmith's CPU kernels where they take the rank-r products of these bf16 tensors and
    the branches' A and B ``weights`` (fp32 or bf16), else None.

    None under a dispatch mode too: a kernel call is not an aten op, so the bench's GEMM
    recorder (the shape-matched limit) would not see the products, nor fake tensors their data.
    """
    k = len(weights) // 2
    if sum(a.shape[0] for a in weights[:k]) > native.LORA_MAX_RANK:
        return None
    if not all(t.is_contiguous() for t in (*tensors, *weights)):
        return None
    if any(w.dtype not in _MASTER_DTYPES or not w.is_cpu for w in weights) or _dispatch_modes():
        return None
    return native.kernels() if native.runs_on(*tensors) else None


def _tiles_fit(g2: torch.Tensor, x2: torch.Tensor) -> bool:
    """Whether ``lora_backward`` can run its products on AMX tiles (``native/amx_lora.cpp``):
    output and input widths multiples of 32, the AMX code running here
    (:func:`~tunesmith.train.fastpath.row_split.tiles_take`)."""
    return not (g2.shape[1] % 32 or x2.shape[1] % 32) and tiles_take(g2, x2)


def _backward_on_tiles(g2: torch.Tensor, h: torch.Tensor, x2: torch.Tensor) -> bool:
    """The rule for an unmeasured backward: on tiles where they fit and the node's rank is
    :data:`TILES_MIN_RANK` or more."""
    return h.shape[1] >= TILES_MIN_RANK and _tiles_fit(g2, x2)


def _key(kind: str, x: torch.Tensor, a_weights, b_weights) -> tuple:
    """A node's shape for its measured paths: input width, output widths, ranks, threads."""
    widths = tuple(b.shape[0] for b in b_weights)
    ranks = tuple(a.shape[0] for a in a_weights)
    return (f"lora-{kind}", x.shape[1], widths, ranks, torch.get_num_threads())


def _large(x: torch.Tensor, b_weights) -> bool:
    width = max(x.shape[1], sum(b.shape[0] for b in b_weights))
    return kernel_choice.worth_measuring(x.shape[0], width)


def _forward_dots(kernels, out, x, a_weights, b_weights, scales) -> bool:
    """Whether the forward's rank-r pass (``lora_forward_`` into ``out``, or ``lora_operands``
    where ``out`` is None) sums in dot products: where the CPU has them, the path measured
    faster for this shape (:mod:`~tunesmith.train.fastpath.kernel_choice`), else
    :func:`_bf16_dots`'s rule."""
    if not native.bf16_dots():
        return False
    names = ("dots", "fp32")

    def paths():
        if out is None:
            run = functools.partial(kernels.lora_operands, x, a_weights, b_weights, scales)
        else:  # the pass adds into its output: a scratch copy of it
            run = functools.partial(
                kernels.lora_forward_, out.clone(), x, a_weights, b_weights, scales
            )
        return {name: functools.partial(run, bf16_dots=name == "dots") for name in names}

    key = _key("operands" if out is None else "forward", x, a_weights, b_weights)
    default = "dots" if _bf16_dots() else "fp32"
    large = functools.partial(_large, x, b_weights)
    return kernel_choice.choose(key, names, default, large, paths) == "dots"


def _backward_path(kernels, args) -> tuple[bool, bool]:
    """(on AMX tiles, in dot products) for ``lora_backward(*args, ...)``: of the paths this node
    and CPU have (the tiles where they fit at any rank, dot products, the fp32 pass), the one
    measured fastest for this shape (:mod:`~tunesmith.train.fastpath.kernel_choice`), else the
    rules (:func:`_backward_on_tiles`, :func:`_bf16_dots`)."""
    g2, h, x2, a_weights, b_weights = args[:5]
    fits = _tiles_fit(g2, x2)
    names = (("tiles",) if fits else ()) + (("dots", "fp32") if native.bf16_dots() else ("fp32",))
    if len(names) == 1:
        return False, False
    if fits and h.shape[1] >= TILES_MIN_RANK:  # _backward_on_tiles
        default = "tiles"
    else:
        default = "dots" if _bf16_dots() and "dots" in names else "fp32"

    def paths():
        run = functools.partial(kernels.lora_backward, *args)
        return {n: functools.partial(run, n == "tiles", bf16_dots=n == "dots") for n in names}

    def before() -> None:  # a step reads x from memory (it was saved a pass ago)
        if (evictor := row_split.evictor()) is not None:
            evictor.evict(x2)

    key = _key("backward-dx" if args[6] else "backward", x2, a_weights, b_weights)
    large = functools.partial(_large, x2, b_weights)
    name = kernel_choice.choose(key, names, default, large, paths, before)
    return name == "tiles", name == "dots"


def _rounded_sides(
    a_weights, b_weights, scales: tuple[float, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` stacked and ``s B`` block-diagonal, in the compute dtype: one rounding of the
    scaled B, as peft's product rounds once."""
    scaled = [(b * s).to(dtype) for b, s in zip(b_weights, scales, strict=True)]
    if len(scaled) == 1:
        return a_weights[0].to(dtype), scaled[0]
    return torch.cat([w.to(dtype) for w in a_weights]), torch.block_diag(*scaled)


def fused_forward(x2, weight, bias, scales: tuple[float, ...], dropout, ab):
    """:class:`LoraLinears`' forward on 2-D ``x2``: ``(out, x_branch, h, dropout)``, where the
    backward (:func:`fused_backward`) needs ``x_branch`` (the masked input under dropout), ``h
    = x_branch Aᵀ`` and ``dropout`` (None, or the mask and scale, reshaped to ``x2``)."""
    a_weights, b_weights = ab[: len(scales)], ab[len(scales) :]
    rows = splits()  # the frozen GEMMs in row blocks where this CPU runs those faster
    x_branch = x2
    if dropout is not None:  # the branch reads the masked input; the frozen base does not
        mask, keep = dropout
        dropout = (mask.reshape(x2.shape), keep)
        x_branch = masked_scale(x2, *dropout)
    kernels = _kernels(x_branch, weights=ab)
    if kernels is not None and bias is None and rows.on_tiles(x2, weight.t()):
        # The branch as the AMX product's low-rank extension: no pass over out to add it.
        dots = _forward_dots(kernels, None, x_branch, a_weights, b_weights, scales)
        h, h32, sbt = kernels.lora_operands(x_branch, a_weights, b_weights, scales, bf16_dots=dots)
        out = rows.mm_extended(x2, weight.t(), h32, sbt)
    else:
        out = rows.mm(x2, weight.t()) if bias is None else rows.addmm(bias, x2, weight.t())
        if kernels is not None:  # A and sB rounded as below, inside; sB's diagonal blocks only
            dots = _forward_dots(kernels, out, x_branch, a_weights, b_weights, scales)
            h = kernels.lora_forward_(out, x_branch, a_weights, b_weights, scales, bf16_dots=dots)
        else:
            a, b = _rounded_sides(a_weights, b_weights, scales, x2.dtype)
            h = x_branch @ a.t()
            out.addmm_(h, b.t())
    return out, x_branch, h, dropout


def fused_backward(g2, x2, h, weight, ab, scales, dropout, want_dx: bool):
    """:class:`LoraLinears`' backward on 2-D ``g2`` from what :func:`fused_forward` gave
    (``x2`` its ``x_branch``): ``(dx2 or None, [grad of each A, then of each B])``."""
    k = len(scales)
    a_weights, b_weights = ab[:k], ab[k:]
    kernels = _kernels(g2, h, x2, weights=tuple(ab))
    if kernels is not None:  # gradients in the masters' dtypes, B's scaled, as below
        args = (g2, h, x2, a_weights, b_weights, scales, want_dx)
        on_tiles, dots = _backward_path(kernels, args)
        _, branch, *grads = kernels.lora_backward(*args, on_tiles, bf16_dots=dots)
    else:
        a, b = _rounded_sides(a_weights, b_weights, scales, x2.dtype)
        dh = g2 @ b  # (tokens, Σ r)
        branch = dh @ a if want_dx else None
        grads = _branch_grads(dh.t() @ x2, g2.t() @ h, a_weights, b_weights, scales)
    dx = None
    if want_dx:
        if dropout is not None:
            branch = masked_scale(branch, *dropout)
        dx = splits().addmm_(branch, g2, weight)  # into the fresh branch
    return dx, grads


def project(x2, weight, bias, scales, dropout, ab):
    """One projection of a larger node, as its module's own node computes it:
    :func:`fused_forward` for a LoRA projection, the frozen product where ``scales`` is None;
    ``(out, x_branch, h, dropout)`` (the last three None where frozen)."""
    if scales is not None:
        return fused_forward(x2, weight, bias, scales, dropout, ab)
    rows = splits()
    out = rows.mm(x2, weight.t()) if bias is None else rows.addmm(bias, x2, weight.t())
    return out, None, None, None


def project_back(g2, x_branch, h, weight, scales, dropout, ab, want_dx: bool):
    """:func:`project`'s backward: ``(dx2 or None, [grad of each A, then of each B])``."""
    if scales is None:
        return (splits().mm(g2, weight) if want_dx else None), []
    return fused_backward(g2, x_branch, h, weight, ab, scales, dropout, want_dx)


def sides(counts, ab) -> list[tuple]:
    """``ab`` (each projection's A and B weights, in order) cut into each projection's, given
    how many each has (``counts``; 0 for a frozen one)."""
    out, i = [], 0
    for n in counts:
        out.append(tuple(ab[i : i + n]))
        i += n
    return out


class LoraLinears(torch.autograd.Function):
    """``x -> x Wᵀ + bias + (x Aᵀ)(s B)ᵀ`` for k stacked projections; see the module doc.

    ``apply(x, weight, bias, scales, dropout, *a_weights, *b_weights)``: ``weight``
    ``(Σ d_out, d_in)`` and ``bias`` (or None) are frozen and in ``x``'s dtype; the i-th
    projection's output is its ``d_out`` columns of the ``(..., Σ d_out)`` result, in order.
    ``dropout``: None, or the ``(mask, scale)`` of :meth:`FastDropout.draw` for ``x`` (one
    projection), applied to the branch's input only.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scales: tuple[float, ...], dropout, *ab):
        x2 = x.reshape(-1, x.shape[-1])
        out, x_branch, h, ctx.dropout = fused_forward(x2, weight, bias, scales, dropout, ab)
        ctx.save_for_backward(x_branch, h, weight, *ab)
        ctx.x_shape, ctx.scales = x.shape, scales
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, h, weight, *ab = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        want_dx = ctx.needs_input_grad[0]
        dx, grads = fused_backward(g2, x2, h, weight, ab, ctx.scales, ctx.dropout, want_dx)
        dx = None if dx is None else dx.view(ctx.x_shape)
        return dx, None, None, None, None, *grads


def _branch_grads(d_a, d_b, a_weights, b_weights, scales) -> list[torch.Tensor]:
    """Each A's rows of ``d_a`` (``(Σ r, d_in)``; ``x2`` is the masked input where the branch had
    dropout) and each B's diagonal block of ``d_b`` (``(Σ d_out, Σ r)``) times its scale, in
    the weights' dtypes."""
    grads_a, grads_b, r0, o0 = [], [], 0, 0
    for a, b, s in zip(a_weights, b_weights, scales, strict=True):
        r, width = a.shape[0], b.shape[0]
        grads_a.append(d_a[r0 : r0 + r].to(a.dtype))
        grads_b.append(d_b[o0 : o0 + width, r0 : r0 + r].to(b.dtype).mul_(s))
        r0, o0 = r0 + r, o0 + width
    return grads_a + grads_b
