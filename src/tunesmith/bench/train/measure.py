"""What every variant of the training bench measures, and how: one row per child run.

The useful-work formula (:func:`useful_flops`) and what counts as a trained or a processed
token are stated in :mod:`tunesmith.bench.train` (the ``tunesmith bench train --help`` text).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.methods.recipes import RECIPES


def _adapter(method: str, recipe: str, label: str) -> dict[str, Any]:
    return {"method": method, **RECIPES[recipe], "label": label}


# The adapters the bench can train (``--adapter``), the same on every variant: ``qv`` the
# ``seed`` recipe (the TRL-matched config of the bench's history), ``all`` the ``default``
# recipe (the demo's), ``dora`` that recipe as DoRA (without dropout, as tunesmith's DoRA node
# computes it). Targets are the recipes' presets (methods/targets.py), resolved per model.
ADAPTERS: dict[str, dict[str, Any]] = {
    "qv": _adapter("lora", "seed", "LoRA r=8 q/v"),
    "all": _adapter("lora", "default", "LoRA r=4 all linear"),
    "dora": _adapter("dora", "default", "DoRA r=4 all linear"),
}
LORA = ADAPTERS["qv"]  # the preference bench's adapter


def adapter_config(adapter: dict[str, Any]) -> dict[str, Any]:
    """``adapter``'s keys of a ``tunesmith train`` config (``make_config``)."""
    return {k: adapter[k] for k in ("method", "target", "rank", "alpha", "dropout")}


LAST_LOSSES = 5  # final train loss = mean of this many last step losses


@dataclass
class BenchSettings:
    """What every variant shares; the child processes receive it as JSON."""

    model: str = "embedded"
    steps: int = 30
    batch_size: int = 8
    lr: float = 2e-3  # the demo recipe's (examples/smollm2_lora.yaml)
    warmup_ratio: float = 0.05
    seq_len: int = 256
    seed: int = 42
    eval_limit: int = 64
    threads: int = 0  # torch intra-op threads in every process; 0 keeps torch's default
    adapter: str = "qv"  # a key of ADAPTERS
    n_train: int = 3000  # raw demo records before cleaning
    n_eval: int = 200


@dataclass
class RunRow:
    """One child run: timings over the timed steps, memory, losses, useful work."""

    variant: str
    rep: int
    precision: str
    gradient_checkpointing: bool
    timed_steps: int
    wall_s: float
    trained_tokens: int
    processed_tokens: int
    padded_tokens: int
    tokens_per_s: float
    peak_rss_bytes: int
    cuda_max_allocated_bytes: int | None
    final_train_loss: float
    eval_loss: float
    flops: float
    flops_per_s: float
    ceiling_ratio: float = 0.0
    shape_limit_s: float = 0.0  # the step's GEMMs alone, per timed step (gemm_limit.py)
    shape_limit_ratio: float = 0.0  # those GEMMs' time over the measured steps' wall time
    shape_limit_gflop: float = 0.0  # their GFLOPs per timed step (recorded where measured)
    order_limit_s: float = 0.0  # the same GEMMs once each in the step's order, per timed step
    order_limit_ratio: float = 0.0  # that time over the measured steps' wall time
    losses: list[float] = field(default_factory=list)
    setup_s: float = 0.0


def matmul_ceiling(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    """Best FLOP/s of an ``n^3`` matmul (2 n^3 FLOPs) in ``bf16`` or ``fp32`` on this device."""
    import torch

    from tunesmith.precision import default_device, torch_dtype

    device = default_device()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, torch_dtype(dtype_name))
    b = torch.randn(n, n, generator=gen).to(device, torch_dtype(dtype_name))
    best = float("inf")
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up the kernels
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def linear_params(model) -> dict[str, int]:
    """Weights the FLOP formula counts: frozen block linears, the head (V*C), the adapter."""
    import torch

    body = head = adapter = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        n = mod.weight.numel()
        if "lora_" in name:
            adapter += n
        elif name.endswith("lm_head"):
            head += n
        else:
            body += n
    return {"body": body, "head": head, "adapter": adapter}


def useful_flops(params: dict[str, int], processed: int, trained: int) -> float:
    """The module docstring's formula for one or more steps' tokens."""
    return (
        4.0 * params["body"] * processed
        + 4.0 * params["head"] * trained
        + 6.0 * params["adapter"] * processed
    )


def peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def eval_loss(model, tokenizer, convs, settings: BenchSettings, autocast_dtype) -> float:
    """Mean token loss on ``convs`` with tunesmith's rendering and loss (same for all variants)."""
    import contextlib

    import torch

    from tunesmith.data.dataset import collate, tokenize_conversations
    from tunesmith.loss import loss_sum

    examples = tokenize_conversations(tokenizer, convs, seq_len=settings.seq_len)
    device = next(model.parameters()).device
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            b = collate(examples[i : i + 16], tokenizer.pad_token_id).to(device)
            ctx = (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                total += float(loss_sum(model, b))
            n += b.num_trained
    return total / max(n, 1)


class StepClock:
    """Stamps the end of each optimizer step; times steps 2..N (step 1 is the warm-up)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def tick(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    @property
    def timed_s(self) -> float:
        return self.ends[-1] - self.ends[0] if len(self.ends) > 1 else 0.0


def finish_row(
    variant: str,
    *,
    precision: str,
    checkpointing: bool,
    clock: StepClock,
    per_step: list[tuple[int, int, int]],
    params: dict[str, int] | None,
    losses: list[float],
    peak_rss: int,
    eval_value: float,
    setup_s: float,
) -> dict[str, Any]:
    """Aggregate the timed steps (2..N) of one run; ``per_step`` is (trained, processed, padded).

    ``params``: the weights of the FLOP formula; None where the formula does not apply (the
    row's FLOP fields are then 0).
    """
    import torch

    timed = per_step[1 : len(clock.ends)]
    trained = sum(t for t, _, _ in timed)
    processed = sum(p for _, p, _ in timed)
    padded = sum(q for _, _, q in timed)
    wall = clock.timed_s
    flops = useful_flops(params, processed, trained) if params else 0.0
    last = losses[-LAST_LOSSES:]
    return asdict(
        RunRow(
            variant=variant,
            rep=0,
            precision=precision,
            gradient_checkpointing=checkpointing,
            timed_steps=len(timed),
            wall_s=wall,
            trained_tokens=trained,
            processed_tokens=processed,
            padded_tokens=padded,
            tokens_per_s=trained / wall if wall else 0.0,
            peak_rss_bytes=peak_rss,
            cuda_max_allocated_bytes=(
                int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
            ),
            final_train_loss=sum(last) / max(len(last), 1),
            eval_loss=eval_value,
            flops=flops,
            flops_per_s=flops / wall if wall else 0.0,
            losses=losses,
            setup_s=setup_s,
        )
    )


def limit_fields(limit, timed_steps: int, wall_s: float) -> dict[str, float]:
    """A row's shape-limit fields from a :class:`~tunesmith.bench.train.gemm_limit.ShapeLimit`
    over ``timed_steps`` steps that took ``wall_s``: seconds per step, share of the wall, for
    the warm per-GEMM replay (``shape_limit_*``) and the in-order one (``order_limit_*``)."""
    return {
        "shape_limit_s": limit.seconds / max(timed_steps, 1),
        "shape_limit_ratio": limit.seconds / wall_s if wall_s else 0.0,
        "shape_limit_gflop": limit.flops / max(timed_steps, 1) / 1e9,
        "order_limit_s": limit.in_order_seconds / max(timed_steps, 1),
        "order_limit_ratio": limit.in_order_seconds / wall_s if wall_s else 0.0,
    }


def share_limit(rows: Iterable[dict[str, Any]], measured: str = "tunesmith") -> None:
    """Give every other variant's row the same workload's limit, per trained token.

    Only ``measured`` records its steps' GEMMs; the peers train on the same data, so their
    limit is the measured row's seconds per trained token (same round) times their own
    trained tokens. Rows without a measured row of their round keep 0.
    """
    rows = list(rows)
    for name in ("shape_limit", "order_limit"):
        per_token = {
            r["rep"]: r[f"{name}_s"] * r["timed_steps"] / r["trained_tokens"]
            for r in rows
            if r["variant"] == measured and r.get("trained_tokens") and r.get(f"{name}_s")
        }
        for r in rows:
            if r["variant"] == measured or r["rep"] not in per_token:
                continue
            seconds = per_token[r["rep"]] * r["trained_tokens"]
            r[f"{name}_s"] = seconds / max(r["timed_steps"], 1)
            r[f"{name}_ratio"] = seconds / r["wall_s"] if r["wall_s"] else 0.0
