"""Batched generation for evaluation and chat: greedy by default, seeded sampling on request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Generation:
    text: str
    num_new_tokens: int
    ended_with_eos: bool


@dataclass(frozen=True)
class SamplingSettings:
    """Temperature and nucleus (top-p) sampling instead of greedy decoding.

    Attributes:
        temperature: divides the logits; 1.0 samples the model's own distribution.
        top_p: keep the smallest set of tokens whose probability reaches ``top_p``.
        seed: seeds the draws, so the same call returns the same samples.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        # top_k=0: no top-k cut (a generation config's default of 50 would add one).
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    cfg = getattr(model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 32,
    device: torch.device | None = None,
    sampling: SamplingSettings | None = None,
) -> list[Generation]:
    """Continuations of already-rendered prompts, in the order given.

    Prompts are sorted by length so each batch carries little padding (left padding, as
    decoder-only generation requires), then results are put back in input order.

    Args:
        sampling: sample with these settings; None (the default) decodes greedily. The draws
            come from torch's generator seeded with ``sampling.seed`` inside a forked RNG
            state, so the caller's random state is left as it was.
    """
    device = device or next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    if sampling is None:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, device, stops, None)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(sampling.seed)
        return _generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, device, stops, sampling
        )


def _generate(model, tokenizer, prompts, max_new_tokens, batch_size, device, stops, sampling):
    if _prefix_tuned(model):
        return _decode_without_generate(
            model, tokenizer, prompts, max_new_tokens, stops, device, sampling
        )
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                **(sampling.generate_kwargs() if sampling else {"do_sample": False}),
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]  # (B, <=max_new_tokens)
            for row, i in zip(new.tolist(), idx, strict=True):
                n, ended = len(row), False
                for j, t in enumerate(row):
                    if t in stops:
                        n, ended = j, True
                        break
                text = tokenizer.decode(row[:n], skip_special_tokens=True)
                results[i] = Generation(text.strip(), n + int(ended), ended)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return results  # type: ignore[return-value]


def _prefix_tuned(model) -> bool:
    """An active prefix adapter; under ``disable_adapter()`` (the base side of an evaluation)
    the plain batched ``generate`` of the base model is right and much faster."""
    if getattr(model, "_adapters_disabled", False):
        return False
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return str(getattr(config, "peft_type", "")).endswith("PREFIX_TUNING")


def _next_token(logits: torch.Tensor, sampling: SamplingSettings | None) -> torch.Tensor:
    """The next token of each row of ``logits`` (B, V), as (B, 1): argmax, or a draw from
    the temperature-scaled distribution cut to its top-p nucleus."""
    if sampling is None:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Drop a token when the tokens before it already reach top_p (the first always stays).
    sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= sampling.top_p, 0.0)
    return order.gather(-1, torch.multinomial(sorted_p, 1))


def _decode_without_generate(model, tokenizer, prompts, max_new_tokens, stops, device, sampling):
    """Decoding without ``generate``: one prefixed forward, then the cached base model.

    With peft 0.21 and transformers 5, ``generate`` on a prefix-tuned model never reaches
    peft's ``prepare_inputs_for_generation`` (which injects the learned key/value prefix), so
    it decodes as if untrained; the plain forward does apply the prefix. One prompt at a time
    (no padding to shift positions against the prefix), with the KV cache: slower than batched
    generation, but correct.
    """
    was_training = model.training
    model.eval()
    base = model.get_base_model()
    results = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            ids = ids.to(device)
            start, ended = ids.shape[1], False
            # The first forward goes through peft, which puts the prefix into the KV cache;
            # later tokens go to the base model with that cache (positions continue after it).
            out = model(input_ids=ids, use_cache=True)
            for _ in range(max_new_tokens):
                next_id = _next_token(out.logits[:, -1], sampling)
                if int(next_id) in stops:
                    ended = True
                    break
                ids = torch.cat([ids, next_id], dim=1)
                out = base(input_ids=next_id, past_key_values=out.past_key_values, use_cache=True)
            new = ids[0, start:].tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            results.append(Generation(text.strip(), len(new) + int(ended), ended))
    finally:
        model.train(was_training)
    return results
