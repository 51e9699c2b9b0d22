"""The shape of a decoder LM, read from its config alone: the one description methods and planner share.

Every method's trainable-parameter formula and every term of the memory plan is built from a
:class:`ModelShape`, so ``tunesmith methods`` and ``tunesmith plan`` can size a model that was
never downloaded. Llama-like families (llama, mistral, qwen2, gemma2: RMSNorm, gated FFN,
grouped KV heads) use closed formulas; any other architecture is measured by instantiating it
on the meta device (shapes without memory, exact). Tests pin the closed formulas to the meta
count for every bundled config.

The parameter groups matter because they are stored differently: bitsandbytes quantizes only
the ``nn.Linear`` layers inside the blocks, while embeddings, ``lm_head`` and norms stay in
16/32 bits (transformers' ``get_keys_to_not_convert`` keeps the output embedding unquantized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma2")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions and parameter groups of a decoder-only LM.

    Attributes:
        model_type: the transformers ``model_type``.
        hidden: model width d. intermediate: the FFN's inner width. layers: decoder blocks L.
        heads / kv_heads: query and key-value heads (GQA when kv_heads < heads).
        head_dim: per-head width. vocab: vocabulary size V.
        tied: whether ``lm_head`` shares the input embedding matrix.
        block_linears: ``(in_features, out_features)`` of each linear of one block, keyed by
            its path inside the block (``self_attn.q_proj``, ``mlp.c_proj``...).
        block_params / block_tensors: parameters and parameter tensors of one block.
        final_norm_params / final_norm_tensors: the norm after the last block.
        linear_params: parameters of the block linears (what 4-bit quantization compresses).
        embed_params: input embedding. lm_head_params: 0 when tied.
        other_params: norms, biases and anything else kept in 16/32 bits.
        tensors: parameter tensors of the whole model (a tied weight counts once).
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
    block_linears: dict[str, tuple[int, int]]
    block_params: int
    block_tensors: int
    final_norm_params: int
    final_norm_tensors: int
    linear_params: int
    embed_params: int
    lm_head_params: int
    other_params: int
    tensors: int

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embed_params + self.lm_head_params + self.other_params

    @property
    def per_layer_linear(self) -> int:
        return self.linear_params // max(self.layers, 1)

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (or values): kv_heads · head_dim."""
        return self.kv_heads * self.head_dim

    def target_shapes(self, names: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
        """(in, out) of every linear a target list selects, one entry per module and block.

        A name selects the block linears whose path equals it or ends with ``.name``, as
        peft's ``target_modules`` matching does (``c_proj`` on GPT-2 selects both projections).

        Raises:
            ValueError: a name that selects no linear of the block.
        """
        found = []
        for name in names:
            hits = [s for path, s in self.block_linears.items() if _selects(name, path)]
            if not hits:
                raise ValueError(
                    f"no linear layer {name!r} in a {self.model_type} block; "
                    f"its linears: {sorted(self.block_linears)}"
                )
            found += hits
        return found * self.layers


def _selects(name: str, path: str) -> bool:
    return path == name or path.endswith("." + name)


def _text_config(cfg: Any) -> Any:
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _dims(cfg: Any) -> dict[str, Any]:
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    return dict(
        model_type=getattr(cfg, "model_type", ""),
        hidden=h,
        intermediate=getattr(cfg, "intermediate_size", None) or 4 * h,
        layers=cfg.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or h // heads,
        vocab=cfg.vocab_size,
        tied=bool(getattr(cfg, "tie_word_embeddings", False)),
    )


def _llama_like(cfg: Any) -> ModelShape:
    d = _dims(cfg)
    h, inter, hd, heads, kv, L = (
        d["hidden"], d["intermediate"], d["head_dim"], d["heads"], d["kv_heads"], d["layers"],
    )  # fmt: skip
    q_dim, kv_dim = heads * hd, kv * hd
    linears = {
        "self_attn.q_proj": (h, q_dim),
        "self_attn.k_proj": (h, kv_dim),
        "self_attn.v_proj": (h, kv_dim),
        "self_attn.o_proj": (q_dim, h),
        "mlp.gate_proj": (h, inter),
        "mlp.up_proj": (h, inter),
        "mlp.down_proj": (inter, h),
    }
    linear = sum(i * o for i, o in linears.values())
    # Qwen2 hard-codes biases on q/k/v (not o) and has no `attention_bias` field; Llama's
    # `attention_bias` biases all four projections.
    qwen2 = d["model_type"].startswith("qwen2")
    attention_bias = bool(getattr(cfg, "attention_bias", False))
    qkv_bias, o_bias = qwen2 or attention_bias, attention_bias and not qwen2
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    bias = qkv_bias * (q_dim + 2 * kv_dim) + o_bias * h + mlp_bias * (2 * inter + h)
    # RMSNorm weights: 2 per block (4 in Gemma-2: pre/post attention and feed-forward), 1 final.
    n_norms = 4 if d["model_type"] == "gemma2" else 2
    block_tensors = len(linears) + n_norms + 3 * qkv_bias + o_bias + 3 * mlp_bias
    embed = d["vocab"] * h
    return ModelShape(
        **d,
        block_linears=linears,
        block_params=linear + bias + n_norms * h,
        block_tensors=block_tensors,
        final_norm_params=h,
        final_norm_tensors=1,
        linear_params=L * linear,
        embed_params=embed,
        lm_head_params=0 if d["tied"] else embed,
        other_params=L * (bias + n_norms * h) + h,
        tensors=L * block_tensors + 2 + (0 if d["tied"] else 1),
    )


def meta_model(cfg: Any, trust_remote_code: bool = False):
    """The causal-LM architecture of ``cfg`` on the meta device: module tree and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)


def decoder_parts(model: Any) -> tuple[Any, Any]:
    """(blocks, final norm) of a decoder-only LM (Llama-style ``layers``/``norm``, GPT-2 ``h``/``ln_f``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    blocks = getattr(decoder, "layers", None)
    if blocks is None:
        blocks = decoder.h
    norm = getattr(decoder, "norm", None)
    return blocks, norm if norm is not None else getattr(decoder, "ln_f", None)


def _linear_shape(module: Any) -> tuple[int, int] | None:
    """(in, out) of an ``nn.Linear`` or of transformers' ``Conv1D`` (GPT-2), else None."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # weight is (in, out), the transpose of nn.Linear's
        return tuple(module.weight.shape)
    return None


def _own(module: Any) -> tuple[int, int]:
    params = list(module.parameters()) if module is not None else []
    return sum(p.numel() for p in params), len(params)


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
    blocks, norm = decoder_parts(model)
    linears = {n: s for n, m in blocks[0].named_modules() if (s := _linear_shape(m)) is not None}
    block_params, block_tensors = _own(blocks[0])
    norm_params, norm_tensors = _own(norm)
    return ModelShape(
        **_dims(cfg),
        block_linears=linears,
        block_params=block_params,
        block_tensors=block_tensors,
        final_norm_params=norm_params,
        final_norm_tensors=norm_tensors,
        linear_params=groups["linear"],
        embed_params=groups["embed"],
        lm_head_params=groups["head"],
        other_params=groups["other"],
        tensors=len(seen),
    )


_MEASURED: dict[str, ModelShape] = {}


def model_shape(cfg: Any) -> ModelShape:
    """The :class:`ModelShape` of a transformers config (or of any object with its fields).

    Closed formulas for :data:`LLAMA_LIKE` families, else one meta-device instantiation
    (remembered per config, since every method formula asks again). A :class:`ModelShape`
    is returned as it is.
    """
    if isinstance(cfg, ModelShape):
        return cfg
    cfg = _text_config(cfg)
    if getattr(cfg, "model_type", "") in LLAMA_LIKE:
        return _llama_like(cfg)
    key = cfg.to_json_string(use_diff=False)
    if key not in _MEASURED:
        _MEASURED[key] = _from_meta(cfg)
    return _MEASURED[key]
