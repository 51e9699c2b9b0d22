"""The CPU training fast paths, applied through one call that returns a handle with ``undo()``.

On CPU the library kernels behind a training step are not fused, so tunesmith swaps in its own
(each with a reference path, an equality test and its measurement in benchmarks/RESULTS.md):

- ``dropout``: :class:`~tunesmith.train.fastpath.dropout.FastDropout`, four mask elements per
  64-bit draw instead of a Bernoulli number each;
- ``lora``: a LoRA projection and its frozen base as one autograd node, a block's q, k and v
  stacked into one (``lora.py``, ``lora_linear.py``, ``lora_siblings.py``);
- ``dora``: a DoRA projection as that node and one column scale, its weight norm computed once
  per optimizer step from a ``(d_out, r)`` product (``dora.py``);
- ``frozen_linear``: every other frozen ``nn.Linear`` as one autograd function without a
  weight gradient (``frozen_linear.py``); it and ``lora`` run their frozen GEMMs in the row
  blocks this CPU measured fastest for the shape (``row_split.py``);
- ``rmsnorm``: Llama-formula RMSNorm as one autograd function (``rmsnorm.py``);
- ``rope``: the rotary position embedding in four ops per direction, bit for bit (``rope.py``);
- ``swiglu``: the gated MLP's ``silu(gate) * up`` as one node in tunesmith's CPU kernels
  (``swiglu.py``), the whole MLP where its three projections take the paths above
  (``gated_mlp.py``); the kernels also run bf16 RoPE, the RMSNorm of bf16 norms with frozen
  weights and the dropout masks' scaling; built once per machine (``native/``), off where not
  built;
- ``attention``: grouped eager attention, per example inside packed rows (``attention.py``,
  ``packed_attention.py``), and on a packed pass whose attention runs fused a Llama-formula
  attention block, its projections and RoPE, as one node (``attention_block.py``, tried by
  ``rope``'s class swap);

and the loop gets three policies from the same handle: how a micro-batch is cut into passes
(``passes.py``: packed rows, with the examples' common prompt prefix stored once, where the
grouped attention runs, and then the preference objectives' batches as one packed row too,
``objectives/packed_rows.py``; length-sorted padded passes otherwise), the loss's last step (the
frozen head and its cross-entropy as one node whose gradient is formed in the forward,
``loss/head_ce.py``, with the head's products in row blocks and its softmax in tunesmith's
kernel, or on an AMX CPU the whole node in one kernel, ``tile_head.py``; else the chunked
cross-entropy) and when to give freed heap pages back to the OS
(``host_memory.py``). Until ``undo()`` every forward pass of the model, the command's
evaluations included, also runs on the cores other processes leave free (``core_watch.py``).
On CUDA the library kernels are fused already and extra passes cost launches, so there the
handle changes nothing and hands out the reference policies.

A path that cannot apply to a model says so once, in one ``tunesmith`` log line (a warning
where the model is one the path does not know, info where skipping is by design).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tunesmith.core_watch import CoreWatch, watch_cores
from tunesmith.data.packing import allow_packed_scoring
from tunesmith.loss.head_ce import (
    HeadKernels,
    head_cross_entropy_sum,
    head_token_nll,
    reference_head_cross_entropy,
    softmax_nll_,
)
from tunesmith.train.fastpath import (
    attention,
    dora,
    dropout,
    frozen_linear,
    lora,
    native,
    rmsnorm,
    rope,
    row_split,
    swiglu,
    tile_head,
)
from tunesmith.train.fastpath.attention import AttentionCaches
from tunesmith.train.fastpath.call_context import several_ranks
from tunesmith.train.fastpath.host_memory import HeapTrimmer, heap_trim_available
from tunesmith.train.fastpath.passes import LengthSortedPasses, PackedPasses, PassPolicy
from tunesmith.train.fastpath.patch import Patch

__all__ = ["FastPaths", "PassPolicy", "apply_fast_paths"]

logger = logging.getLogger("tunesmith")


@dataclass
class FastPaths:
    """What :func:`apply_fast_paths` changed in a model, and the loop policies that go with it.

    A default-constructed handle is the reference path: nothing installed, one pass per
    micro-batch, ``F.cross_entropy`` on fp32 logits, no heap trimming.

    Attributes:
        installed: Modules (or switches) each model-changing path changed, by path name.
        skipped: Why each path that did not apply did not, by path name.
        pass_policy: How the loop cuts a micro-batch into forward passes.
        head_loss: ``(lm_head, hidden (N, C), targets (N,)) -> fp32 sum``, the loss's last step.
        trimmer: Returns freed heap pages after a step when memory crept (CPU), or None.
        watch: Runs fewer threads while other processes need the cores (CPU), or None.
        caches: The grouped attention's per-pass caches, or None.
    """

    installed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pass_policy: PassPolicy = field(default_factory=PassPolicy)
    head_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = (
        reference_head_cross_entropy
    )
    trimmer: HeapTrimmer | None = None
    watch: CoreWatch | None = None
    caches: AttentionCaches | None = None
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def after_step(self) -> bool:
        """Called by the loop after each optimizer step; True when it trimmed the heap."""
        return self.trimmer is not None and self.trimmer.after_step()

    def attach_watch(self, model: torch.nn.Module, watch: CoreWatch) -> None:
        """Let ``watch`` size the threads at every forward pass of ``model`` (training and the
        command's evaluations) until :meth:`undo`."""
        self.watch = watch
        # undo() runs these last first: the hook goes, then the run's own thread count is back.
        self._undo += [watch.restore, watch.watch_forwards(model).remove]

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Around the loop's steps, and around a whole run (its evaluations are watched too):
        when they stop, however, the run's own thread count again (what follows starts from it:
        the evaluation, a ``compare``'s next method, a notebook's next run)."""
        try:
            yield
        finally:
            if self.watch is not None:
                self.watch.restore()

    def undo(self) -> None:
        """Give the model back exactly as it was (classes, forwards, attention implementation,
        state dict) and fall back to the reference policies. Idempotent."""
        while self._undo:
            self._undo.pop()()
        if self.caches is not None:
            self.caches.clear()
        reference = FastPaths()
        self.installed, self.pass_policy = {}, reference.pass_policy
        self.head_loss, self.trimmer, self.caches = reference.head_loss, None, None
        self.watch = None


def apply_fast_paths(
    model: torch.nn.Module,
    device: torch.device,
    *,
    kv_prefix: bool = False,
    packed_rows: bool = False,
    own_threads: bool = False,
) -> FastPaths:
    """Install the CPU fast paths into ``model`` (after the method is applied) and return the
    handle that owns them.

    Args:
        model: The model to train, peft-wrapped or not; changed in place until ``undo()``.
        device: Where it trains; anything but CPU gets a handle that changes nothing.
        kv_prefix: The method puts a key/value prefix in front of each row (MAM), which a
            packed row's examples would share, so passes are not packed.
        packed_rows: The examples are already packed rows (``--packing``), never packed again.
        own_threads: The thread count is the user's (``--threads``; ``OMP_NUM_THREADS`` is
            too): never changed here; otherwise a single process runs fewer threads while
            others need the cores.

    Returns:
        The handle: counts, reasons for what did not apply, the loop policies, ``undo()``.
    """
    if device.type != "cpu":
        logger.debug("CPU fast paths: none on %s (its library kernels are fused)", device.type)
        return FastPaths()
    fast = FastPaths(caches=AttentionCaches(), head_loss=fast_head_loss)
    installs = {  # in order: lora's fused node takes the masks of the FastDropout modules
        "dropout": dropout.install,
        "lora": lora.install,
        "dora": dora.install,
        "frozen_linear": frozen_linear.install,
        "rmsnorm": rmsnorm.install,
        "rope": rope.install,
        "swiglu": swiglu.install,
        "attention": lambda m: attention.install(m, fast.caches),
    }
    try:
        for name, install in installs.items():
            _record(fast, name, install(model))
    except BaseException:
        fast.undo()  # never leave a model half-changed
        raise
    if "attention" not in fast.installed:
        fast.caches = None  # nothing reads them
    fast.pass_policy = _pass_policy(fast, model, kv_prefix=kv_prefix, packed_rows=packed_rows)
    if isinstance(fast.pass_policy, PackedPasses):  # the preference objectives' batches too
        fast._undo.append(allow_packed_scoring(model, fast_token_nll))
    if heap_trim_available():
        fast.trimmer = HeapTrimmer()
    else:
        _say(fast, "heap trimming", "no glibc malloc_trim in this process", expected=True)
    if not own_threads and not several_ranks():
        watch = watch_cores()
        if watch is not None:
            fast.attach_watch(model, watch)
    return fast


def _record(fast: FastPaths, name: str, patch: Patch) -> None:
    if patch.count:
        fast.installed[name] = patch.count
        fast._undo.append(patch.undo)
    if patch.skipped is not None:
        _say(fast, name, patch.skipped, expected=patch.expected)


def _say(fast: FastPaths, name: str, reason: str, *, expected: bool) -> None:
    fast.skipped[name] = reason
    level = logging.INFO if expected else logging.WARNING
    logger.log(level, "CPU fast path %s does not apply: %s", name, reason)


def _pass_policy(fast: FastPaths, model, *, kv_prefix: bool, packed_rows: bool) -> PassPolicy:
    """Packed passes where the grouped attention runs and a row's examples stay apart."""
    from tunesmith.data.packing import packable

    if packed_rows:
        why = "the examples are packed rows already (--packing)"
    elif not packable(model, kv_prefix=kv_prefix):
        why = "the method shares virtual tokens or a key/value prefix across a row"
    elif not attention.runs_grouped(model):
        why = "the grouped attention is not installed (eager would pay T^2 per packed row)"
    else:
        return PackedPasses()
    _say(fast, "packed passes", why + "; length-sorted padded passes instead", expected=True)
    return LengthSortedPasses()


def fast_head_loss(head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The fast paths' last step: :func:`~tunesmith.loss.head_ce.head_cross_entropy_sum` with
    the head's products in the row blocks every frozen GEMM of the fast paths runs in."""
    return head_cross_entropy_sum(head, h, targets, _head_kernels(head, h))


def fast_token_nll(head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The preference log-probs' head on the fast paths: :func:`~tunesmith.loss.head_ce.
    head_token_nll` with :func:`fast_head_loss`'s products, softmax and AMX kernel."""
    return head_token_nll(head, h, targets, _head_kernels(head, h))


def _head_kernels(head: torch.nn.Module, h: torch.Tensor) -> HeadKernels:
    fused = tile_head.head_nll if tile_head.on_tiles(h, head.weight) else None
    return HeadKernels(row_split.splits().mm, _softmax_nll, fused)


def _softmax_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`~tunesmith.loss.head_ce.softmax_nll_` by tunesmith's kernel for bf16 logits."""
    if native.runs_on(logits):
        return native.kernels().softmax_nll_(logits, targets)
    return softmax_nll_(logits, targets)
