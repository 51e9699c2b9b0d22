"""Planner predictions against measured memory.

On CUDA: for a ~0.5B model built from its config (random weights), over
full / LoRA / QLoRA x seq {512, 2048} x batch {1, 4} x gradient checkpointing on/off, the
analytic prediction of allocated bytes (no CUDA context, no fragmentation) against
``torch.cuda.max_memory_allocated`` over two real training steps (the second one has the
optimizer state resident, as every later step does). Goal: ratio within 0.95-1.15.

On CPU (or with ``--cpu``): the analytic estimate (and, for full/LoRA, the traced one on fake
tensors) against live bytes measured by PyTorch's profiler over the same two real steps of a
small model; QLoRA runs bitsandbytes' real 4-bit layers on CPU.

With ``--preference`` (CPU): preference steps (DPO with each reference: adapter-off for LoRA, a
frozen copy for full, cached log-probs; SimPO with none; KTO), two real steps through
tunesmith's own loss, reference and loop (:mod:`tunesmith.bench.pref_memory`), against the
analytic plan of the same settings.

Usage:
  python benchmarks/plan_vs_measured.py            # CUDA grid if a GPU is present, else CPU
  python benchmarks/plan_vs_measured.py --quick    # a few cells only
  python benchmarks/plan_vs_measured.py --cpu --json out.json
  python benchmarks/plan_vs_measured.py --preference   # DPO/SimPO/KTO cells on CPU
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tunesmith.methods.base import MethodArgs, get_method  # noqa: E402
from tunesmith.plan.analytic import StepSettings, step_terms  # noqa: E402
from tunesmith.plan.configs import bundled_config  # noqa: E402
from tunesmith.plan.livebytes import profiled_cpu_peak  # noqa: E402
from tunesmith.plan.trace import build_model, run_step, traced_estimate  # noqa: E402
from tunesmith.shape import model_shape  # noqa: E402

GIB = 1024**3
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def predicted(cfg, method, b, s, gc_on, *, device="cuda", foreach=True, precision="bf16"):
    shape, args = model_shape(cfg), MethodArgs(target=TARGETS, dropout=0.0)
    settings = StepSettings(
        method=method, batch_size=b, seq_len=s, precision=precision,
        gradient_checkpointing=gc_on, targets=TARGETS, dropout=0.0, foreach=foreach,
        device=device, master_fp32=False,  # the benchmark trains full FT in pure bf16
    )  # fmt: skip
    spec = get_method(method)
    n = spec.count_trainable(cfg, args)
    return step_terms(shape, settings, n, spec.count_tensors(cfg, args))


def hf_model(method, ckpt_dir, device):
    """The model as tunesmith trains it: bf16 base, fp32 adapters; QLoRA via bitsandbytes
    (NF4, double quantization, peft's k-bit preparation), on ``device`` (0 or "cpu")."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": device})
    if method == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, **kw)
    model.config.use_cache = False
    if method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=False
        )  # checkpointing is switched on below, the same way for every method
    if method in ("lora", "qlora"):
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS))
        model = get_peft_model(model, lora)
    return model.train()


def cuda_cells(quick: bool) -> list[tuple[str, int, int, bool]]:
    """The CUDA grid's cells, ``(method, seq_len, batch, checkpointing)``.

    Quick: seq x batch in {(512, 1), (2048, 4)} (the two corners); full: every combination of
    seq {512, 2048} and batch {1, 4}. Both with checkpointing off and on, for full/LoRA/QLoRA.
    """
    shapes = ((512, 1), (2048, 4)) if quick else tuple(itertools.product((512, 2048), (1, 4)))
    return [
        (method, s, b, gc_on)
        for method in ("full", "lora", "qlora")
        for s, b in shapes
        for gc_on in (False, True)
    ]


def write_random_checkpoint(cfg, out_dir, device: str = "cpu", seed: int = 0) -> str:
    """Save a bf16 model built from ``cfg`` with seeded random weights (nothing downloaded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    return str(out_dir)


def measure_cuda_cell(cfg, ckpt, method: str, s: int, b: int, gc_on: bool) -> dict:
    """Two real training steps of one cell on ``cuda:0``: the row, with reserved bytes too.

    The predicted reserved figure is the allocated one plus the planner's fragmentation
    headroom (``analytic.FRAGMENTATION``); the CUDA context is outside both.
    """
    from tunesmith.plan.analytic import FRAGMENTATION

    model = hf_model(method, ckpt, 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_step(
        model, batch_size=b, seq_len=s, gradient_checkpointing=gc_on,
        vocab=cfg.vocab_size, foreach=True,
    )  # fmt: skip
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    pred = predicted(cfg, method, b, s, gc_on).allocated
    r = row(method, s, b, gc_on, pred, measured, time.perf_counter() - t0)
    pred_reserved = pred * (1 + FRAGMENTATION)
    r["reserved_gib"] = round(reserved / GIB, 4)
    r["reserved_ratio"] = round(pred_reserved / reserved, 3)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return r


def cuda_grid(quick: bool, configs: dict | None = None) -> list[dict]:
    """Every cell of :func:`cuda_cells` for each model config (default: Qwen2.5-0.5B)."""
    configs = configs or {"qwen2.5-0.5b": bundled_config("qwen2.5-0.5b")}
    rows = []
    for name, cfg in configs.items():
        with tempfile.TemporaryDirectory() as ckpt:
            write_random_checkpoint(cfg, ckpt, device="cuda")
            for cell in cuda_cells(quick):
                rows.append({"model": name, **measure_cuda_cell(cfg, ckpt, *cell)})
    return rows


def cpu_grid(quick: bool) -> list[dict]:
    """Full and LoRA (fp32): traced and analytic; QLoRA (bitsandbytes on CPU): analytic."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    args = MethodArgs(target=TARGETS, dropout=0.0)
    rows = []
    seqs, batches = ((128,), (2,)) if quick else ((128, 512), (1, 4))
    grid = itertools.product(("full", "lora", "qlora"), seqs, batches, (False, True))
    with tempfile.TemporaryDirectory() as ckpt:
        write_random_checkpoint(cfg, ckpt)
        for method, s, b, gc_on in grid:
            t0 = time.perf_counter()
            traced = None
            if method == "qlora":
                precision, model = "bf16", hf_model(method, ckpt, "cpu")
            else:
                precision = "fp32"
                traced = traced_estimate(
                    cfg, method, batch_size=b, seq_len=s, precision=precision,
                    gradient_checkpointing=gc_on, args=args,
                ).total_peak_bytes  # fmt: skip
                torch.manual_seed(0)
                model = build_model(cfg, method, args, precision=precision, attn="sdpa")
            measured = profiled_cpu_peak(
                lambda m=model, b=b, s=s, g=gc_on: run_step(
                    m, batch_size=b, seq_len=s, gradient_checkpointing=g, vocab=cfg.vocab_size
                )
            )
            analytic = predicted(
                cfg, method, b, s, gc_on, device="cpu", foreach=False, precision=precision
            ).allocated
            r = row(method, s, b, gc_on, analytic, measured, time.perf_counter() - t0)
            if traced is not None:
                r["traced_gib"] = round(traced / GIB, 4)
                r["traced_ratio"] = round(traced / measured, 3)
                r["in_goal"] = r["in_goal"] and 0.95 <= traced / measured <= 1.15
            rows.append(r)
    return rows


def preference_grid(quick: bool) -> list[dict]:
    """LoRA and full x DPO (each reference), SimPO, KTO on the CPU grid's model, fp32."""
    from tunesmith.bench.pref_memory import PrefCell, measure_cell, small_llama

    cfg = small_llama(vocab=8000, hidden=256, inter=704, layers=4)
    # (batch, prompt, completion): short completions, and long ones (most positions scored)
    shapes = ((4, 64, 192),) if quick else ((1, 32, 96), (4, 64, 192), (4, 32, 480))
    cells = [
        PrefCell(method, objective, b, p, c, cached)
        for method, objective, cached in (
            ("lora", "dpo", False), ("lora", "dpo", True), ("full", "dpo", False),
            ("lora", "simpo", False), ("full", "simpo", False),
            ("lora", "kto", False), ("full", "kto", False),
        )
        for b, p, c in shapes
    ]  # fmt: skip
    rows = []
    for cell in cells:
        t0 = time.perf_counter()
        rows.append({**measure_cell(cfg, cell), "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def row(method, s, b, gc_on, pred, measured, seconds) -> dict:
    ratio = pred / measured
    return {
        "method": method, "seq": s, "batch": b, "checkpointing": gc_on,
        "predicted_gib": round(pred / GIB, 4), "measured_gib": round(measured / GIB, 4),
        "ratio": round(ratio, 3), "in_goal": 0.95 <= ratio <= 1.15,
        "seconds": round(seconds, 1),
    }  # fmt: skip


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console(width=200).print(table)
    ok = sum(r["in_goal"] for r in rows)
    print(f"{ok}/{len(rows)} within -5%/+15% of measured")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cells only")
    parser.add_argument("--cpu", action="store_true", help="the CPU comparison even with a GPU")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--preference", action="store_true", help="preference steps (DPO, SimPO, KTO) on CPU"
    )
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.preference:
        rows = preference_grid(args.quick)
        title = "small Llama on CPU, preference steps: analytic vs profiler-measured live bytes"
    elif torch.cuda.is_available() and not args.cpu:
        rows = cuda_grid(args.quick)
        title = f"Qwen2.5-0.5B on {torch.cuda.get_device_name()}: analytic vs max_memory_allocated"
    else:
        rows = cpu_grid(args.quick)
        title = "small Llama on CPU: analytic (and traced) vs profiler-measured live bytes"
    print_table(rows, title)
    if args.json:
        from tunesmith.atomic import write_json

        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
