"""Training throughput against the TRL peer: same model, data, adapter, batch, steps and seed.

Three variants train the same LoRA (r=8, alpha=32, q_proj/v_proj, dropout 0.05) on the same
cleaned clinic demo data, each in its own child process (so imports, caches and peak RSS are
its own), alternated ``tunesmith, trl-default, trl-tuned, tunesmith, ...`` so that drift in
machine load hits all of them alike:

tunesmith    :class:`tunesmith.train.loop.TrainLoop` as ``tunesmith train`` drives it
             (``--precision auto``: a bf16-stored frozen base where the hardware has native bf16).
trl-default  TRL ``SFTTrainer`` as a user writes it: ``SFTConfig`` defaults (gradient
             checkpointing on, completion-only loss on prompt/completion data) and fp32, the
             setting the CPU defaults leave (``bf16=True`` without ``use_cpu`` refuses to start).
trl-tuned    TRL with its speed options: bf16 autocast, padding-free batches, no checkpointing.

Only the optimizer steps after one warm-up step are timed (callbacks stamp each step's end).
Trained tokens are positions whose next token carries loss; processed tokens are the
non-padding positions. The useful work of a step, the same formula for every variant, is::

    FLOPs = 4 * N_body * processed + 4 * V * C * trained + 6 * N_adapter * processed

``N_body``: frozen linear weights of the decoder blocks (forward 2N plus the input-gradient
half of the backward 2N; no weight gradients); ``V * C``: the vocabulary projection, needed
only where a loss is taken; ``N_adapter``: trainable adapter weights (forward, input and
weight gradients: 6N). Attention score products (~3% at these ~90-token records) and
recomputation by gradient checkpointing are not counted: they are not useful work. See
Kaplan et al., "Scaling Laws for Neural Language Models" (arXiv:2001.08361), Sec. 2.1, for
the 2N-forward / 4N-backward accounting this splits. Achieved FLOP/s are divided by the
``2048^3`` matmul ceiling measured on this machine in the same run, at the variant's
compute precision.

Eval loss is the same for all variants: tunesmith's rendering of the held-out set, mean
token loss over assistant tokens, computed with each model in the precision it trained in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HELP = "training throughput, memory and loss vs TRL SFTTrainer (default and tuned)"

VARIANTS: tuple[str, ...] = ("tunesmith", "trl-default", "trl-tuned")
FINAL_KEYS: tuple[str, ...] = (
    "speedup_vs_trl_default",
    "speedup_vs_trl_tuned",
    "peak_rss_ratio",
    "ceiling_ratio",
)
LORA = {"rank": 8, "alpha": 32.0, "dropout": 0.05, "target": ("q_proj", "v_proj")}
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
    losses: list[float] = field(default_factory=list)
    setup_s: float = 0.0


# -- shared measurements ---------------------------------------------------------------------
def matmul_ceiling(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    """Best FLOP/s of an ``n^3`` matmul (2 n^3 FLOPs) in ``bf16`` or ``fp32`` on this device."""
    import torch

    from tunesmith.train.precision import default_device, torch_dtype

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


# -- data ------------------------------------------------------------------------------------
def prepare_data(workdir: Path, settings: BenchSettings) -> dict[str, str]:
    """Generate and clean the demo once; write it as messages (tunesmith) and prompt/completion (TRL).

    Returns:
        Paths ``{"train_messages", "train_prompt_completion", "eval_messages"}``.
    """
    from tunesmith.atomic import write_jsonl
    from tunesmith.data.clean import clean
    from tunesmith.data.readers import read_files
    from tunesmith.data.records import Conversation
    from tunesmith.demo.dataset import write_demo_eval, write_raw_demo
    from tunesmith.models.loading import load_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    raw = write_raw_demo(workdir / "demo_raw.jsonl", seed=0, n_train=settings.n_train)
    held_out = write_demo_eval(workdir / "demo_eval.jsonl", seed=0, n_eval=settings.n_eval)
    result = clean(
        [raw],
        workdir / "train.jsonl",
        eval_inputs=[held_out],
        eval_share=0.0,
        tokenizer=load_tokenizer(settings.model),
        max_tokens=settings.seq_len,
        seed=settings.seed,
    )
    train = [c for c in read_files([result.train_path]) if isinstance(c, Conversation)]
    # TRL's conversational prompt-completion form: the same turns, split before the answer.
    pc_path = workdir / "train.prompt_completion.jsonl"
    write_jsonl(
        pc_path,
        (
            {
                "prompt": [{"role": t.role, "content": t.content} for t in c.prompt_turns],
                "completion": [{"role": "assistant", "content": c.answer}],
            }
            for c in train
        ),
    )
    return {
        "train_messages": str(result.train_path),
        "train_prompt_completion": str(pc_path),
        "eval_messages": str(result.eval_path),
    }


def _read_conversations(path: str) -> list:
    from tunesmith.data.readers import read_files
    from tunesmith.data.records import Conversation

    return [c for c in read_files([path]) if isinstance(c, Conversation)]


def eval_loss(model, tokenizer, convs, settings: BenchSettings, autocast_dtype) -> float:
    """Mean token loss on ``convs`` with tunesmith's rendering and loss (same for all variants)."""
    import contextlib

    import torch

    from tunesmith.data.dataset import collate, tokenize_conversations
    from tunesmith.train.loss import loss_sum

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


# -- child processes -------------------------------------------------------------------------
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


def _finish_row(
    variant: str,
    settings: BenchSettings,
    *,
    precision: str,
    checkpointing: bool,
    clock: StepClock,
    per_step: list[tuple[int, int, int]],
    params: dict[str, int],
    losses: list[float],
    peak_rss: int,
    eval_value: float,
    setup_s: float,
) -> dict[str, Any]:
    """Aggregate the timed steps (2..N) of one run; ``per_step`` is (trained, processed, padded)."""
    import torch

    timed = per_step[1 : len(clock.ends)]
    trained = sum(t for t, _, _ in timed)
    processed = sum(p for _, p, _ in timed)
    padded = sum(q for _, _, q in timed)
    wall = clock.timed_s
    flops = useful_flops(params, processed, trained)
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


def run_tunesmith(settings: BenchSettings, data: dict[str, str], workdir: Path) -> dict[str, Any]:
    """tunesmith's own path: ``load_for_training`` + ``tokenize_conversations`` + ``TrainLoop``."""
    import torch

    from tunesmith.config import make_config
    from tunesmith.data.dataset import tokenize_conversations
    from tunesmith.train.fastpath import apply_fast_paths
    from tunesmith.train.loop import LoopSettings, TrainLoop
    from tunesmith.train.precision import default_device
    from tunesmith.train.run import load_for_training
    from tunesmith.train.speed import adapter_autocast

    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    cfg = make_config(
        {
            "model": settings.model,
            "method": "lora",
            "target": ",".join(LORA["target"]),
            "rank": LORA["rank"],
            "alpha": LORA["alpha"],
            "dropout": LORA["dropout"],
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "seed": settings.seed,
        }
    )
    device = default_device()
    model, tok, _src, _spec, precision, autocast = load_for_training(cfg, device)
    fast_paths = apply_fast_paths(model, device)
    examples = tokenize_conversations(
        tok, _read_conversations(data["train_messages"]), seq_len=settings.seq_len
    )
    loop_settings = LoopSettings(
        max_steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_ratio=settings.warmup_ratio,
        seed=settings.seed,
        autocast_dtype=autocast,
        keep_input_dtype=adapter_autocast("lora", precision),
    )
    loop = TrainLoop(
        model, examples, tok.pad_token_id, loop_settings, workdir / "run", device,
        fast_paths=fast_paths,
    )  # fmt: skip
    clock = StepClock()
    setup_s = time.perf_counter() - t0
    # The loop restarts the resident high-water mark (its own peak is training's); the bench
    # compares whole processes with TRL's, so the loading peak before training counts too.
    before = peak_rss_bytes()
    result = loop.train(progress=lambda done, loss: clock.tick())
    peak = max(before, peak_rss_bytes())
    per_step = []
    for step in range(settings.steps):  # the batch plan is a pure function of the step
        passes = loop.micro_batches(step)
        per_step.append(
            (
                sum(b.num_trained for b in passes),
                sum(b.num_tokens for b in passes),
                sum(b.input_ids.numel() - b.num_tokens for b in passes),
            )
        )
    return _finish_row(
        "tunesmith",
        settings,
        precision=precision,
        checkpointing=False,
        clock=clock,
        per_step=per_step,
        params=linear_params(model),
        losses=result.losses,
        peak_rss=peak,
        eval_value=eval_loss(
            model,
            tok,
            _read_conversations(data["eval_messages"])[: settings.eval_limit],
            settings,
            autocast,
        ),
        setup_s=setup_s,
    )


class _CountingCollator:
    """Wraps TRL's collator to record each batch's (trained, processed, padded) token counts."""

    def __init__(self, inner, log: list[tuple[int, int, int]]):
        self.inner, self.log = inner, log

    def __call__(self, features):
        batch = self.inner(features)
        labels = batch["labels"]
        if "attention_mask" in batch:
            processed = int(batch["attention_mask"].sum())
        else:  # padding-free: one flat row, no padding unless pad_to_multiple_of
            processed = labels.numel()
        self.log.append((int((labels != -100).sum()), processed, labels.numel() - processed))
        return batch


def trl_config(settings: BenchSettings, out_dir: Path, tuned: bool):
    """The ``SFTConfig`` a user writes: defaults (fp32 on CPU) or TRL's speed options."""
    import torch
    from trl import SFTConfig

    from tunesmith.train.precision import cpu_has_native_bf16

    common = dict(
        output_dir=str(out_dir),
        report_to="none",
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(settings.warmup_ratio * settings.steps),
        seed=settings.seed,
        save_strategy="no",
        logging_steps=1,  # per-step losses; the cost is one .item() per step
        disable_tqdm=True,
        max_length=settings.seq_len,
    )
    if not tuned:
        # SFTConfig's bf16=True default refuses CPUs without use_cpu; a user sets bf16=False.
        return SFTConfig(**common, bf16=torch.cuda.is_available())
    bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
    return SFTConfig(
        **{**common, "max_length": None},  # padding-free without packing needs max_length=None
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        padding_free=True,
        gradient_checkpointing=False,
    )


def run_trl(
    settings: BenchSettings, data: dict[str, str], workdir: Path, tuned: bool
) -> dict[str, Any]:
    """TRL ``SFTTrainer`` on the already loaded model and an in-memory dataset (offline)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from tunesmith.models import load_model_and_tokenizer

    t0 = time.perf_counter()
    model, tok, _src = load_model_and_tokenizer(settings.model)
    if torch.cuda.is_available():
        model.to("cuda")
    rows = [
        json.loads(line) for line in Path(data["train_prompt_completion"]).read_text().splitlines()
    ]
    args = trl_config(settings, workdir / "trl", tuned)
    clock, losses, counts = StepClock(), [], []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.tick()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=list(LORA["target"]),
            task_type="CAUSAL_LM",
        ),
        callbacks=[Stamp()],
    )
    trainer.data_collator = _CountingCollator(trainer.data_collator, counts)
    setup_s = time.perf_counter() - t0
    trainer.train()
    peak = peak_rss_bytes()
    precision = trainer.accelerator.mixed_precision
    autocast = torch.bfloat16 if precision == "bf16" else None
    return _finish_row(
        "trl-tuned" if tuned else "trl-default",
        settings,
        precision="bf16" if autocast else "fp32",
        checkpointing=bool(args.gradient_checkpointing),
        clock=clock,
        per_step=counts[: settings.steps],
        params=linear_params(trainer.model),
        losses=losses,
        peak_rss=peak,
        eval_value=eval_loss(
            trainer.model,
            tok,
            _read_conversations(data["eval_messages"])[: settings.eval_limit],
            settings,
            autocast,
        ),
        setup_s=setup_s,
    )


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def child_main(argv: list[str]) -> int:
    """``python -m tunesmith.bench.train SPEC.json OUT.json``: one variant, one process."""
    spec = json.loads(Path(argv[0]).read_text())
    settings = BenchSettings(**spec["settings"])
    _set_threads(settings.threads)
    workdir = Path(spec["workdir"])
    variant = spec["variant"]
    if variant == "tunesmith":
        row = run_tunesmith(settings, spec["data"], workdir)
    elif variant in ("trl-default", "trl-tuned"):
        row = run_trl(settings, spec["data"], workdir, tuned=variant == "trl-tuned")
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    from tunesmith.atomic import write_json

    write_json(Path(argv[1]), row)
    return 0


def run_child(
    variant: str,
    settings: BenchSettings,
    data: dict[str, str],
    workdir: Path,
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run one variant in a fresh Python process and return its row.

    Raises:
        WorkFailed: the child exited non-zero (its stderr tail is in the message).
    """
    from tunesmith.atomic import write_json
    from tunesmith.errors import WorkFailed

    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "row.json"
    write_json(
        spec_path,
        {"variant": variant, "settings": asdict(settings), "data": data, "workdir": str(workdir)},
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.bench.train", str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkFailed(f"bench child {variant} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


# -- the parent --------------------------------------------------------------------------------
def bench_train(
    settings: BenchSettings,
    *,
    reps: int = 1,
    variants: tuple[str, ...] = VARIANTS,
    workdir: Path | None = None,
    progress=None,
) -> dict[str, Any]:
    """Prepare data once, then run ``reps`` alternated rounds of ``variants``.

    Returns:
        ``{"settings", "ceilings": {"bf16", "fp32"} (FLOP/s), "rows": [...], "summary": {...}}``.
    """
    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        root = Path(workdir or tmp)
        say("preparing the cleaned demo data ...")
        data = prepare_data(root / "data", settings)
        ceilings = {"bf16": 0.0, "fp32": 0.0}
        _set_threads(settings.threads)  # the ceiling with the threads the runs get
        rows = []
        for rep in range(reps):
            for name in ceilings:  # best of every round: the ceiling under the same load
                ceilings[name] = max(ceilings[name], matmul_ceiling(name))
            for variant in variants:
                say(f"rep {rep + 1}/{reps}: {variant} ({settings.steps} steps) ...")
                row = run_child(variant, settings, data, root / f"{variant}-{rep}")
                row["rep"] = rep
                rows.append(row)
                say(
                    f"  {row['tokens_per_s']:.1f} trained tok/s, {row['wall_s']:.1f} s, "
                    f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB, eval loss {row['eval_loss']:.4f}"
                )
        for row in rows:
            ceiling = ceilings[row["precision"] if row["precision"] in ceilings else "fp32"]
            row["ceiling_ratio"] = row["flops_per_s"] / ceiling if ceiling else 0.0
    return {
        "settings": asdict(settings),
        "ceilings": ceilings,
        "rows": rows,
        "summary": summarize(rows),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The four headline ratios from the medians over repetitions (NaN where a variant is absent)."""

    def med(variant: str, key: str) -> float:
        vals = [r[key] for r in rows if r["variant"] == variant]
        return statistics.median(vals) if vals else float("nan")

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "speedup_vs_trl_default": ratio(
            med("tunesmith", "tokens_per_s"), med("trl-default", "tokens_per_s")
        ),
        "speedup_vs_trl_tuned": ratio(
            med("tunesmith", "tokens_per_s"), med("trl-tuned", "tokens_per_s")
        ),
        "peak_rss_ratio": ratio(
            med("tunesmith", "peak_rss_bytes"), med("trl-default", "peak_rss_bytes")
        ),
        "ceiling_ratio": med("tunesmith", "ceiling_ratio"),
    }


def final_lines(summary: dict[str, float]) -> list[str]:
    """The benchmark's last four lines, ``key=value`` in :data:`FINAL_KEYS` order."""
    return [f"{key}={summary[key]:.3f}" for key in FINAL_KEYS]


def parse_final_lines(text: str) -> dict[str, float]:
    """Read the four ``key=value`` lines back from the end of the benchmark's output.

    Raises:
        ValueError: the output does not end with exactly those four lines.
    """
    lines = text.strip().splitlines()[-len(FINAL_KEYS) :]
    keys = [line.split("=", 1)[0] for line in lines]
    if keys != list(FINAL_KEYS):
        raise ValueError(f"output does not end with {', '.join(FINAL_KEYS)}: {lines}")
    return {k: float(line.split("=", 1)[1]) for k, line in zip(keys, lines, strict=True)}


def results_table(report: dict[str, Any]):
    from rich.table import Table

    s = report["settings"]
    c = report["ceilings"]
    table = Table(
        title=(
            f"training, {s['model']}, LoRA r=8 q/v, batch {s['batch_size']}, "
            f"{s['steps']} steps (1 warm-up), ceilings bf16 {c['bf16'] / 1e9:.0f} / "
            f"fp32 {c['fp32'] / 1e9:.0f} GFLOP/s"
        )
    )
    cols = (
        "variant", "rep", "prec", "ckpt", "trained tok/s", "wall s", "pad %",
        "peak RSS GiB", "train loss", "eval loss", "GFLOP/s", "of ceiling",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in report["rows"]:
        total = r["processed_tokens"] + r["padded_tokens"]
        table.add_row(
            r["variant"],
            str(r["rep"]),
            r["precision"],
            "yes" if r["gradient_checkpointing"] else "no",
            f"{r['tokens_per_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{100 * r['padded_tokens'] / max(total, 1):.0f}",
            f"{r['peak_rss_bytes'] / 2**30:.2f}",
            f"{r['final_train_loss']:.4f}",
            f"{r['eval_loss']:.4f}",
            f"{r['flops_per_s'] / 1e9:.1f}",
            f"{r['ceiling_ratio']:.3f}",
        )
    return table


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="embedded", help="base model (default: embedded SmolLM2-135M)"
    )
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (1 untimed)")
    parser.add_argument("--reps", type=int, default=3, help="alternated rounds of all variants")
    parser.add_argument(
        "--quick", action="store_true", help="12 steps, 1 round (< 15 min on 2 CPU cores)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--eval-limit", type=int, default=64, help="held-out records for eval loss")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default: torch's own; 1 resists a busy machine)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"variants to run (default: {' '.join(VARIANTS)})",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every row to this JSON file")


def run(args: argparse.Namespace) -> int:
    from tunesmith.errors import ConfigError

    steps, reps = (12, 1) if args.quick else (args.steps, args.reps)
    for key, value in (("steps", steps), ("reps", reps), ("batch-size", args.batch_size)):
        if value < (2 if key == "steps" else 1):
            raise ConfigError(
                key, value, "an integer >= 2" if key == "steps" else "an integer >= 1"
            )
    settings = BenchSettings(
        model=args.model,
        steps=steps,
        batch_size=args.batch_size,
        eval_limit=args.eval_limit,
        threads=args.threads,
    )
    report = bench_train(
        settings,
        reps=reps,
        variants=tuple(args.variants),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        from tunesmith.atomic import write_json

        write_json(Path(args.json), report)
    from rich.console import Console

    # A fixed width: a pipe or log file would otherwise squeeze the 12 columns to 80 characters.
    Console(width=160).print(results_table(report))
    for line in final_lines(report["summary"]):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
