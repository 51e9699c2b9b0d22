"""The gated MLP's ``act(gate(x)) * up(x)`` as one autograd node in tunesmith's CPU kernels.

transformers' Llama-family MLP computes ``down(silu(gate(x)) * up(x))``: forward a SiLU and a
multiply, backward two multiplies and ``silu_backward``, each a pass over the ``(tokens,
intermediate)`` bf16 activations, the widest of the step, and the node keeps ``silu(gate(x))``
beside ``gate(x)`` and ``up(x)``. Here the product is one pass of
:mod:`~tunesmith.train.fastpath.native`'s kernels each way, keeping only ``gate(x)`` and
``up(x)``. The projections stay the module's own calls (but for two plain frozen ones, below),
so LoRA branches and hooks see them as before. The forward equals the eager one bit for bit;
the gradients are within one bf16 rounding (the eager backward rounds ``g * up`` before
``silu_backward``; ``tests/train/fastpath/test_native.py``).

Where the gate and up projections are both frozen linears of
:mod:`~tunesmith.train.fastpath.frozen_linear` (no LoRA branch, no bias, nothing hooked), one
node computes them with the product (:class:`_FrozenGatedUnit`): the backward's input gradient
is ``d_gate W_gate`` with ``d_up W_up`` accumulated into it in place, instead of two products
that autograd then adds in one more pass over ``(tokens, hidden)``, and two nodes fewer
(benchmarks/RESULTS.md, "Reads prefetched ahead of the passes"). Where the down projection takes
a fast path too, and LoRA projections without dropout as well, the whole MLP is one node
(:mod:`~tunesmith.train.fastpath.gated_mlp`); this pair's node stays for a down projection that
does not (hooked, DoRA, a dropout branch).

Which MLPs is decided by what they compute, as for the norms: :func:`why_not_swiglu` runs the
class's own ``forward`` on a copy whose three projections are small random fp32 layers and
compares it with ``down(silu(gate(x)) * up(x))``. Llama, Mistral, Qwen2/3 and the models copied
from them pass; a GELU MLP or one that fails the probe keeps its own code. Per call, only bf16
activations on CPU take the kernels (the tests' fp32 models and generation's other dtypes keep
the module's forward), and only where the kernels are built (:func:`install` says otherwise).
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.train.fastpath import frozen_linear, gated_mlp, native
from tunesmith.train.fastpath.patch import Patch, fast_subclass, skipped, swap_probed_classes
from tunesmith.train.fastpath.row_split import splits

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return native.kernels().swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        d_gate, d_up = native.kernels().swiglu_backward(grad.contiguous(), gate, up)
        return d_gate, d_up


class _FrozenGatedUnit(torch.autograd.Function):
    """``silu(x W_gateᵀ) * (x W_upᵀ)`` with both weights frozen, as :class:`_SwiGLU` computes
    the product; the products run as the frozen linears run them (``row_split``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
        x2, rows = x.reshape(-1, x.shape[-1]), splits()
        gate, up = rows.mm(x2, w_gate.t()), rows.mm(x2, w_up.t())
        ctx.save_for_backward(gate, up, w_gate, w_up)
        ctx.x_shape = x.shape
        return native.kernels().swiglu_forward(gate, up).view(*x.shape[:-1], gate.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up, w_gate, w_up = ctx.saved_tensors
        grad = grad.reshape(gate.shape).contiguous()
        d_gate, d_up = native.kernels().swiglu_backward(grad, gate, up)
        dx = gated_mlp.frozen_pair_dx(d_gate, d_up, w_gate, w_up)
        return dx.view(ctx.x_shape), None, None


def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
    if (whole := gated_mlp.plan(self, x)) is not None:
        return gated_mlp.GatedMlp.apply(x, *whole[:3], *whole[3])
    gate_proj, up_proj = self.gate_proj, self.up_proj
    if (
        torch.is_grad_enabled() and x.requires_grad and native.runs_on(x)
        and frozen_linear.takes(gate_proj, x) and frozen_linear.takes(up_proj, x)
        and gate_proj.weight.shape == up_proj.weight.shape
    ):  # fmt: skip
        return self.down_proj(_FrozenGatedUnit.apply(x, gate_proj.weight, up_proj.weight))
    gate, up = gate_proj(x), up_proj(x)
    if gate.shape != up.shape or not native.runs_on(gate, up):
        return self.down_proj(self.act_fn(gate) * up)  # the formula the probe checked
    return self.down_proj(_SwiGLU.apply(gate, up))  # no graph node where no gradient is wanted


_PROBE_WIDTH, _PROBE_INNER, _PROBE_ROWS = 8, 16, 4
_PROBE_TOL = dict(rtol=1e-5, atol=1e-6)


def why_not_swiglu(module: nn.Module) -> str | None:
    """Why ``module``'s class does not compute ``down(silu(gate(x)) * up(x))``; None when it does.

    The probe is a shallow copy of ``module`` with random fp32 ``gate_proj``, ``up_proj`` and
    ``down_proj`` (so it costs nothing on a large model), run through the class's ``forward``.
    """
    if not all(isinstance(getattr(module, n, None), nn.Module) for n in PROJECTIONS):
        return "it has no gate_proj, up_proj and down_proj"
    if not callable(getattr(module, "act_fn", None)):
        return "it has no act_fn"
    gen = torch.Generator().manual_seed(0)
    probe = copy.copy(module)
    probe._modules = dict(module._modules)  # its own table: the real projections stay put
    layers = {}
    for name, (n_in, n_out) in zip(
        PROJECTIONS,
        ((_PROBE_WIDTH, _PROBE_INNER), (_PROBE_WIDTH, _PROBE_INNER), (_PROBE_INNER, _PROBE_WIDTH)),
        strict=True,
    ):
        layer = nn.Linear(n_in, n_out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        probe._modules[name] = layers[name] = layer
    x = torch.randn((_PROBE_ROWS, _PROBE_WIDTH), generator=gen) * 2
    with torch.no_grad():
        try:
            want = type(module).forward(probe, x)
        except Exception as exc:  # noqa: BLE001 - any failure means: leave this class alone
            return f"its forward failed on a probe input ({type(exc).__name__})"
        got = layers["down_proj"](F.silu(layers["gate_proj"](x)) * layers["up_proj"](x))
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return "its forward returns something else than one tensor of the input's shape"
    if not torch.allclose(want, got, **_PROBE_TOL):
        return "its forward is not down(silu(gate(x)) * up(x))"
    return None


@functools.cache
def _fast_class(cls: type) -> type:
    """``cls`` with this path's forward (:func:`~tunesmith.train.fastpath.patch.fast_subclass`)."""
    return fast_subclass(cls, _fast_forward, globals())


def install(model: nn.Module) -> Patch:
    """Give every MLP that computes the SwiGLU formula the kernels' product, where the kernels
    are built; ``undo`` gives every changed module its class back."""
    if native.kernels() is None:
        # Buildable but not built is a speedup the user can have (a warning, with the command);
        # switched off or no compiler is a choice or a fact (info).
        missing = native.enabled() and native.buildable() is None and not native.built()
        return skipped(f"tunesmith's CPU kernels: {native.why_not()}", expected=not missing)
    candidates: dict[type, list[nn.Module]] = {}
    for module in model.modules():
        cls = type(module)
        # Only MLPs with the three projections: another kind (a vision tower's) is no candidate.
        if (
            cls.__name__.endswith("MLP")
            and cls.forward is not _fast_forward
            and all(hasattr(module, n) for n in PROJECTIONS)
        ):
            candidates.setdefault(cls, []).append(module)
    return swap_probed_classes(
        candidates, why_not_swiglu, _fast_class,
        none="the model has no gated MLP (gate_proj, up_proj, down_proj)",
    )  # fmt: skip
