"""Write a merged Llama-family or Qwen2 model as one GGUF file for llama.cpp.

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` and the GGUF spec
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md); the file itself is written with
the ``gguf`` package (``GGUFWriter``), tensor names come from its ``TensorNameMap`` (the same
table llama.cpp's converter uses) and q8_0 blocks from its ``quants`` module.

Two things the converter does that a plain rename does not:

* Llama only: the rows of ``q_proj``/``k_proj`` are permuted per head from HF's
  rotate-half layout (pairs (i, i + d/2)) back to the interleaved layout (pairs (2i, 2i+1))
  that llama.cpp's RoPE expects. Qwen2 uses llama.cpp's NEOX rope, which already matches HF,
  so its projections are written as they are.
* Tensor types: norms and biases stay F32 (they are tiny and sensitive); matrices take the
  requested type; a matrix whose rows do not divide into 32-value q8_0 blocks falls back to F16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# File bytes per weight of each type (q8_0: 32 int8 values and one f16 scale per block).
GGUF_BYTES_PER_PARAM = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
ARCHITECTURES = ("llama", "qwen2")

# tokenizers' pre-tokenizer shapes -> llama.cpp's ``tokenizer.ggml.pre`` names.
_LLAMA3_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"


def _permute_rotary(w, n_head: int):
    """HF rotate-half rows -> llama.cpp interleaved rows, per head. ``w``: (n_head·d, ...)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    scaling = getattr(config, "rope_scaling", None)
    if rope_type != "default" or (scaling and scaling.get("rope_type", "default") != "default"):
        raise UserInputError(
            f"GGUF export does not handle rope scaling {rope_type!r} yet; "
            "export --format safetensors instead"
        )
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _pre_tokenizer_name(arch: str, tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how text is split before BPE (it selects the same regex)."""
    if arch == "qwen2":
        return "qwen2"
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if "Digits" in kinds and "ByteLevel" in kinds:
        return "smollm"  # SmolLM/StarCoder: single digits, then GPT-2 byte level
    if any(
        str(p.get("pattern", {}).get("Regex", "")).startswith(_LLAMA3_REGEX_START) for p in parts
    ):
        return "llama-bpe"
    return "gpt-2"


def tokenizer_metadata(tokenizer, vocab_size: int, arch: str) -> dict[str, Any]:
    """Tokens, types, merges, special ids and the chat template for a byte-level BPE tokenizer."""
    from gguf import TokenType

    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tj.get("decoder")):
        raise UserInputError(
            "GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2); this one is "
            f"{model.get('type')}; use --format safetensors"
        )
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserInputError(f"tokenizer has ids beyond the model's {vocab_size} embeddings")
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [TokenType.UNUSED] * vocab_size  # embedding rows no token uses (padded vocab)
    for token, idx in vocab.items():
        tokens[idx] = token
        if token in added:
            types[idx] = TokenType.CONTROL if added[token].special else TokenType.USER_DEFINED
        else:
            types[idx] = TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: llama.cpp reads the default one
        template = template.get("default") or next(iter(template.values()))
    return {
        "pre": _pre_tokenizer_name(arch, tj),
        "tokens": tokens,
        "types": [int(t) for t in types],
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
        "add_bos": bool(
            tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        ),
        "chat_template": template,
    }


def _add_hparams(writer, config, arch: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer(writer, meta: dict[str, Any]) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id),
        ("unk", writer.add_unk_token_id),
    ):
        if meta[key] is not None:
            add(meta[key])
    writer.add_add_bos_token(meta["add_bos"])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


def _encode_tensor(data, gguf_type: str, name: str):
    """``(array, raw_dtype)`` for one tensor; ``data`` is float32 numpy."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if data.ndim <= 1 or name.endswith("_norm.weight") or gguf_type == "f32":
        return data.astype(np.float32), None
    if gguf_type == "bf16":
        return quants.quantize(data, Q.BF16), Q.BF16
    if gguf_type == "q8_0" and data.shape[-1] % 32 == 0:
        return quants.quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), None


def _tensors(model, arch: str):
    """Yield ``(gguf_name, float32 numpy array)`` in llama.cpp's layout."""
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    name_map = gguf.get_tensor_name_map(
        {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch],
        config.num_hidden_layers,
    )
    for hf_name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when no `output` tensor is present
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserInputError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and ".attn_q." in gguf_name:
            data = _permute_rotary(data, n_head)
        elif arch == "llama" and ".attn_k." in gguf_name:
            data = _permute_rotary(data, n_kv)
        yield gguf_name, data


def check_architecture(config) -> str:
    """The GGUF architecture name for ``config``; UserInputError for unsupported ones."""
    arch = config.model_type
    if arch not in ARCHITECTURES:
        raise UserInputError(
            f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {arch!r}; "
            "use --format safetensors"
        )
    return arch


def write_gguf(
    model, tokenizer, path: Path, gguf_type: str = "f16", name: str | None = None
) -> Path:
    """Write ``model`` (merged, any float dtype) + ``tokenizer`` to the GGUF file ``path``.

    Raises:
        UserInputError: unsupported architecture, tokenizer or tensor type.
    """
    import gguf

    arch = check_architecture(model.config)
    if gguf_type not in GGUF_TYPES:
        raise UserInputError(f"--gguf-type {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[gguf_type]
    meta = tokenizer_metadata(tokenizer, model.config.vocab_size, arch)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.upper()]])
    writer.add_name(name or getattr(model.config, "_name_or_path", "") or arch)
    _add_hparams(writer, model.config, arch)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, meta)
    for gguf_name, data in _tensors(model, arch):
        array, raw_dtype = _encode_tensor(data, gguf_type, gguf_name)
        writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
