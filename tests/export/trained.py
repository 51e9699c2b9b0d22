"""A tiny run that has really learned to answer and to end its turn, for llama.cpp checks.

A randomly initialised model never emits ``<|im_end|>``, so "stops where it should" cannot be
tested on one. Here a hidden-256 model (K-quant rows are multiples of 256, so llama.cpp's
K-quants apply instead of falling back) is trained in a few seconds to answer eight fixed
questions and end each answer with ``<|im_end|>``; then a LoRA adapter is trained on top, so the
export really merges something. Both are deterministic (fixed seeds, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny import make_tiny_model, make_tokenizer

QA = [
    ("How many patients live in Lyon?", "SELECT COUNT(*) FROM patients WHERE city = 'Lyon';"),
    ("List the names of all doctors.", "SELECT name FROM doctors ORDER BY name;"),
    ("Which doctor has the most visits?", "SELECT doctor_id FROM visits;"),
    ("List the prescriptions.", "SELECT * FROM prescriptions;"),
    ("How many visits?", "SELECT COUNT(*) FROM visits;"),
    ("List drugs.", "SELECT drug FROM prescriptions;"),
    ("Name the patients.", "SELECT name FROM patients;"),
    ("Count the doctors.", "SELECT COUNT(*) FROM doctors;"),
]
SYSTEM = "Answer with SQL."
WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}


def _messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return msgs + ([{"role": "assistant", "content": answer}] if answer else [])


def _batch(tok):
    texts = [tok.apply_chat_template(_messages(q, a), tokenize=False) for q, a in QA]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def _fit(model, params, batch, steps: int, lr: float) -> None:
    ids, mask, labels = batch
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def build_trained_run(root: Path, arch: str = "llama") -> Path:
    """``root/base`` (trained checkpoint) and ``root/run`` (LoRA run directory with an eval
    split of the same eight questions); returns the run directory."""
    from peft import LoraConfig, TaskType, get_peft_model

    from tunesmith.rundir import RunDir

    tok = make_tokenizer()
    model = make_tiny_model(arch, vocab_size=len(tok), **WIDE)
    batch = _batch(tok)
    torch.manual_seed(0)
    _fit(model, model.parameters(), batch, steps=150, lr=3e-3)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)

    torch.manual_seed(0)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
        task_type=TaskType.CAUSAL_LM,
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    _fit(peft_model, trainable, batch, steps=20, lr=1e-3)
    run = RunDir(root / "run")
    peft_model.save_pretrained(run.adapter)
    run.config_path.write_text(f"model: {base}\nmethod: lora\n", encoding="utf-8")
    run.eval_data.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"messages": _messages(q, a)}) for q, a in QA]
    run.eval_data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return run.path
