"""Parameter counts by group, from a config alone.

The groups matter because they are stored differently: bitsandbytes quantizes only the
``nn.Linear`` layers inside the blocks, while embeddings, ``lm_head`` and norms stay in 16/32
bits (transformers' ``get_keys_to_not_convert`` keeps the output embedding unquantized).
Llama-like families (llama, mistral, qwen2, gemma2) use closed formulas; any other architecture
is counted by instantiating it on the meta device (no memory, exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma2")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions and parameter groups the memory model needs.

    Attributes:
        model_type: the transformers ``model_type``.
        hidden: h. intermediate: the MLP's inner width. layers: L. heads / kv_heads: query and
            key-value heads (GQA when kv_heads < heads). head_dim: d. vocab: V.
        tied: whether ``lm_head`` shares the input embedding matrix.
        linear_params: parameters of the block linears (what 4-bit quantization compresses).
        embed_params: input embedding. lm_head_params: 0 when tied.
        other_params: norms, biases and anything else kept in 16/32 bits.
    """

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linear_params: int
    embed_params: int
    lm_head_params: int
    other_params: int

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embed_params + self.lm_head_params + self.other_params

    @property
    def per_layer_linear(self) -> int:
        return self.linear_params // max(self.layers, 1)


def _dims(cfg: Any) -> dict[str, Any]:
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    inter = getattr(cfg, "intermediate_size", None) or 4 * h
    tied = bool(getattr(cfg, "tie_word_embeddings", True))
    return dict(
        model_type=cfg.model_type, hidden=h, intermediate=inter, layers=cfg.num_hidden_layers,
        heads=heads, kv_heads=kv, head_dim=hd, vocab=cfg.vocab_size, tied=tied,
    )  # fmt: skip


def _llama_like(cfg: Any) -> ModelShape:
    d = _dims(cfg)
    h, inter, hd, heads, kv, L = (
        d["hidden"], d["intermediate"], d["head_dim"], d["heads"], d["kv_heads"], d["layers"],
    )  # fmt: skip
    # q, k, v, o projections (GQA shrinks k and v) and the gated MLP's gate, up, down.
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * inter
    bias = 0
    if cfg.model_type == "qwen2" or getattr(cfg, "attention_bias", False):
        bias += heads * hd + 2 * kv * hd  # q/k/v biases (Qwen2 always has them)
        if getattr(cfg, "attention_bias", False) and cfg.model_type != "qwen2":
            bias += h  # Llama's attention_bias also biases o_proj
    if getattr(cfg, "mlp_bias", False):
        bias += 2 * inter + h
    # RMSNorm weights: 2 per block (4 in Gemma-2: pre/post attention and feed-forward), 1 final.
    norms = (4 if cfg.model_type == "gemma2" else 2) * h
    embed = d["vocab"] * h
    return ModelShape(
        **d,
        linear_params=L * (attn + mlp),
        embed_params=embed,
        lm_head_params=0 if d["tied"] else embed,
        other_params=L * (bias + norms) + h,
    )


def meta_model(cfg: Any):
    """Instantiate the causal-LM architecture on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def _from_meta(cfg: Any) -> ModelShape:
    import torch.nn as nn

    model = meta_model(cfg)
    seen: set[int] = set()
    groups = dict(linear=0, embed=0, head=0, other=0)
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue  # a tied weight is stored once
            seen.add(id(p))
            if module is in_emb:
                groups["embed"] += p.numel()
            elif module is out_emb:
                groups["head"] += p.numel()
            elif isinstance(module, nn.Linear) and p is module.weight:
                groups["linear"] += p.numel()
            else:
                groups["other"] += p.numel()
    return ModelShape(
        **_dims(cfg),
        linear_params=groups["linear"],
        embed_params=groups["embed"],
        lm_head_params=groups["head"],
        other_params=groups["other"],
    )


def model_shape(cfg: Any) -> ModelShape:
    """Dimensions and parameter groups of a config (closed form where known, else meta count)."""
    if cfg.model_type in LLAMA_LIKE:
        return _llama_like(cfg)
    return _from_meta(cfg)
