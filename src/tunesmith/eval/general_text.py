"""Forgetting check: perplexity on a small general-English text set, before vs after tuning.

Fine-tuning on a narrow task (the demo's SQL) can erode what the base model knew. A cheap
signal is the model's perplexity on ordinary text unrelated to the task: if it rises a lot
after tuning, the adapter has overwritten general language ability (catastrophic forgetting;
see Biderman et al., 2024, *LoRA Learns Less and Forgets Less*, https://arxiv.org/abs/2405.09673).

The set ships with the package (``tunesmith/assets/general_text.jsonl``): 75 short paragraphs
written for tunesmith, mixing encyclopedic facts, everyday instructions, dialogue, short
narrative and notices. Rows are ``{"id", "kind", "text"}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from tunesmith.errors import UserInputError


@cache
def _rows() -> tuple[dict[str, Any], ...]:
    text = (resources.files("tunesmith") / "assets" / "general_text.jsonl").read_text("utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def general_texts() -> list[str]:
    """The shipped general-text paragraphs, in file order."""
    return [row["text"] for row in _rows()]


def _nll_sum(model: Any, input_ids: Any, attention_mask: Any) -> tuple[float, int]:
    """Summed next-token NLL (float64) and the number of scored tokens in one batch."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    # Prompt tuning prepends its virtual tokens' logits: score only the text's own positions.
    logits = logits[:, -input_ids.shape[1] :]
    # Position t predicts token t+1; a target counts only if it is a real (unpadded) token.
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)  # (B, T-1)
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return float(nll.to(torch.float64)), int((targets != -100).sum())


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int = 256,
) -> float:
    """Token-weighted perplexity of a causal LM over ``texts``: ``exp(sum NLL / tokens)``.

    Every text is tokenized on its own (with the tokenizer's special tokens, e.g. BOS) and
    truncated to ``max_length``; its first token is context only. Texts are batched by length
    to keep padding small; padding is right-side and masked out of the loss, so the result
    does not depend on ``batch_size``. Only one batch of logits exists at a time, and the
    model is run in eval mode under ``torch.inference_mode`` (its training flag is restored).

    Args:
        model: A ``transformers`` causal LM (a PEFT-wrapped one works the same).
        tokenizer: Its tokenizer.
        texts: The texts to score, e.g. :func:`general_texts`.
        batch_size: Texts per forward pass.
        max_length: Tokens kept per text.

    Returns:
        The perplexity (>= 1).

    Raises:
        UserInputError: If no text has at least two tokens, so nothing can be scored.
    """
    import torch

    if batch_size < 1 or max_length < 2:
        raise ValueError("batch_size must be >= 1 and max_length >= 2")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    encoded = sorted((ids for ids in encoded if len(ids) >= 2), key=len)
    if not encoded:
        raise UserInputError("perplexity: no text has two or more tokens to score")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                batch = encoded[start : start + batch_size]
                width = len(batch[-1])  # sorted by length: the last is the longest
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                nll, count = _nll_sum(model, ids.to(device), mask.to(device))
                total_nll += nll
                total_tokens += count
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)
