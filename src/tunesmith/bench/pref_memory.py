"""The memory plan of a preference step against two real steps, measured by PyTorch's profiler.

The SFT plan is checked on real CPU steps (``benchmarks/plan_vs_measured.py --cpu``); this
does the same for DPO and its kin. A cell builds a Llama from its config (fp32, random
weights), applies the method through its registered builder, and trains two steps through
the code ``tunesmith train`` runs: :class:`~tunesmith.train.pref_steps.PreferenceRun` picks
and builds the reference (the adapter off, a frozen copy for full fine-tuning, or log-probs
cached before the first step for ``--init-from``), and :class:`~tunesmith.train.loop.TrainLoop`
runs the objective's loss, its backward, the clipped AdamW step and the scheduler. The
prediction is :func:`~tunesmith.plan.analytic.step_terms` for the StepSettings the run would
plan with (:func:`~tunesmith.train.guard.objective_plan_settings`).

The CPU fast paths (hand-fused kernels that only the CPU trainer installs) stay off, as in the
SFT cells: the plan models the library forward that CUDA runs.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

GIB = 1024**3
# Every linear of the block, as the SFT CPU cells train them.
ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class PrefCell:
    """One measured step shape.

    Attributes:
        method: a ``--method`` name (``lora``, ``full``...).
        objective: ``dpo``, ``orpo``, ``simpo`` or ``kto``.
        batch_size: examples per step (pairs, or KTO examples).
        prompt_len: prompt tokens of every example.
        completion_len: tokens of every completion (chosen and rejected alike).
        cached: reference log-probs scored once before training (``--init-from``).
    """

    method: str
    objective: str
    batch_size: int = 2
    prompt_len: int = 32
    completion_len: int = 32
    cached: bool = False

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.completion_len


def small_llama(vocab: int = 2000, hidden: int = 128, inter: int = 352, layers: int = 2):
    """A small Llama config (GQA, untied head), the shape of the SFT CPU cells."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=4 if hidden <= 128 else 8, num_key_value_heads=2,
        tie_word_embeddings=False, max_position_embeddings=4096,
    )  # fmt: skip


def _examples(cell: PrefCell, vocab: int, n: int, seed: int) -> list:
    from tunesmith.objectives import PairIds, UnpairedIds

    rng = random.Random(seed)

    def ids(k: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(k)]

    p, c = cell.prompt_len, cell.completion_len
    if cell.objective == "kto":
        return [UnpairedIds(ids(p), ids(c), i % 2 == 0) for i in range(n)]
    return [PairIds(ids(p), ids(c), ids(c)) for _ in range(n)]


def _run_config(cell: PrefCell):
    from tunesmith.config import make_config

    values: dict[str, Any] = {
        "objective": cell.objective, "method": cell.method, "precision": "fp32",
        "batch-size": cell.batch_size, "seq-len": cell.seq_len, "max-steps": 2,
        "logging-steps": 1, "warmup-ratio": 0.0,
    }  # fmt: skip
    if cell.cached:
        # Only whether it is set matters here: the cache is scored from the model at hand.
        values["init-from"] = "starting-adapter"
    return make_config(values)


def planned_settings(cell: PrefCell, args):
    """The StepSettings the run would plan with (its reference included), at this cell's shape."""
    from tunesmith.methods import get_method
    from tunesmith.plan.analytic import StepSettings
    from tunesmith.train.guard import objective_plan_settings

    return StepSettings(
        cell.method, cell.batch_size, cell.seq_len, precision="fp32", targets=args.target,
        rank=args.rank, dropout=args.dropout, device="cpu", foreach=True,
        # position t's logits score token t+1: a row's completion tokens are its scored positions
        logits_fraction=cell.completion_len / cell.seq_len,
        **objective_plan_settings(_run_config(cell), get_method(cell.method)),
    )  # fmt: skip


def predicted_bytes(model_cfg, settings, args) -> int:
    """``step_terms(...).allocated`` of ``settings`` for ``model_cfg`` (``args``: the method's)."""
    from tunesmith.methods import get_method
    from tunesmith.plan.analytic import step_terms
    from tunesmith.shape import model_shape

    spec = get_method(settings.method)
    n_trainable = spec.count_trainable(model_cfg, args)
    n_tensors = spec.count_tensors(model_cfg, args)
    return step_terms(model_shape(model_cfg), settings, n_trainable, n_tensors).allocated


def measured_bytes(model_cfg, cell: PrefCell, args, seed: int = 0) -> int:
    """Peak live CPU bytes (profiler) over two training steps as ``tunesmith train`` runs them."""
    from transformers import AutoModelForCausalLM

    from tunesmith.methods import get_method
    from tunesmith.plan.livebytes import profiled_cpu_peak
    from tunesmith.rundir import RunDir
    from tunesmith.train.loop import TrainLoop
    from tunesmith.train.pref_steps import PreferenceRun
    from tunesmith.train.steps import loop_settings

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        model_cfg, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    model = get_method(cell.method).apply(model, args).train()
    pad_id = 0
    train_ex = _examples(cell, model_cfg.vocab_size, 2 * cell.batch_size, seed)
    run_cfg = _run_config(cell)
    built = SimpleNamespace(
        model=model, tokenizer=SimpleNamespace(pad_token_id=pad_id), autocast=None,
        spec=get_method(cell.method), precision="fp32",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp))
        pref = PreferenceRun.for_run(run_cfg, built, train_ex, [], run)
        loop = TrainLoop(
            model, train_ex, pad_id, loop_settings(run_cfg, built, 2), run.path,
            torch.device("cpu"), **pref.loop_inputs(train_ex, pad_id),
        )  # fmt: skip
        return profiled_cpu_peak(loop.train)


def measure_cell(model_cfg, cell: PrefCell, args=None) -> dict[str, Any]:
    """The row of one cell: predicted and measured GiB and their ratio (goal 0.95-1.15)."""
    from tunesmith.methods.base import MethodArgs

    args = args or MethodArgs(target=ALL_LINEARS, dropout=0.0)
    settings = planned_settings(cell, args)
    measured = measured_bytes(model_cfg, cell, args)
    pred = predicted_bytes(model_cfg, settings, args)
    ratio = pred / measured
    return {
        "method": cell.method, "objective": cell.objective, "reference": settings.reference,
        "batch": cell.batch_size, "seq": cell.seq_len,
        "predicted_gib": round(pred / GIB, 4), "measured_gib": round(measured / GIB, 4),
        "ratio": round(ratio, 3), "in_goal": 0.95 <= ratio <= 1.15,
    }  # fmt: skip
