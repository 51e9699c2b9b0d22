"""Planner predictions against measured memory.

On CUDA: for a ~0.5B model built from its config (random weights), over
full / LoRA / QLoRA x seq {512, 2048} x batch {1, 4} x gradient checkpointing on/off, the
analytic prediction of allocated bytes (no CUDA context, no fragmentation) against
``torch.cuda.max_memory_allocated`` over two real training steps (the second one has the
optimizer state resident, as every later step does). Goal: ratio within 0.95-1.15.

On CPU (or with ``--cpu``): the analytic estimate (and, for full/LoRA, the traced one on fake
tensors) against live bytes measured by PyTorch's profiler over the same two real steps of a
small model; QLoRA runs bitsandbytes' real 4-bit layers on CPU.

Usage:
  python benchmarks/plan_vs_measured.py            # CUDA grid if a GPU is present, else CPU
  python benchmarks/plan_vs_measured.py --quick    # a few cells only
  python benchmarks/plan_vs_measured.py --cpu --json out.json
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


def cuda_grid(quick: bool) -> list[dict]:
    from transformers import AutoModelForCausalLM

    cfg = bundled_config("qwen2.5-0.5b")
    rows = []
    with tempfile.TemporaryDirectory() as ckpt:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(ckpt)
        methods = ("full", "lora", "qlora")
        seqs, batches = ((512,), (1,)) if quick else ((512, 2048), (1, 4))
        for method, s, b, gc_on in itertools.product(methods, seqs, batches, (False, True)):
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
            pred = predicted(cfg, method, b, s, gc_on).allocated
            rows.append(row(method, s, b, gc_on, pred, measured, time.perf_counter() - t0))
            del model
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def cpu_grid(quick: bool) -> list[dict]:
    """Full and LoRA (fp32): traced and analytic; QLoRA (bitsandbytes on CPU): analytic."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    args = MethodArgs(target=TARGETS, dropout=0.0)
    rows = []
    seqs, batches = ((128,), (2,)) if quick else ((128, 512), (1, 4))
    grid = itertools.product(("full", "lora", "qlora"), seqs, batches, (False, True))
    with tempfile.TemporaryDirectory() as ckpt:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(ckpt)
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
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if torch.cuda.is_available() and not args.cpu:
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
