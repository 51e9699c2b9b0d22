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
  requested type; a matrix whose rows do not divide into 32-value blocks falls back to F16.

Tensors are streamed: every tensor's name, shape and type go into the header first, then each
tensor is encoded and written on its own, so writing needs the merged model plus one encoded
tensor, not a second copy of the whole model. K-quants are not written here: the caller writes
an f32 file and hands it to llama.cpp's quantizer (:mod:`tunesmith.export.llamacpp`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UserInputError
from tunesmith.export.quants import QUANTS

# The types written here; the K-quants come from llama.cpp's quantizer.
GGUF_TYPES = tuple(name for name, q in QUANTS.items() if not q.via_llamacpp)
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


def _end_of_turn_id(model, tokenizer) -> int | None:
    """The token that ends an assistant turn: the generation config's stop token that is not
    the tokenizer's EOS (Qwen2: ``<|im_end|>`` beside ``<|endoftext|>``), else the EOS itself.

    llama.cpp stops at EOS, EOT and the tokens it recognises by name; writing the trained
    end-of-turn id explicitly makes the stop independent of that name list.
    """
    from tunesmith.eval.generate import stop_token_ids

    stops = stop_token_ids(model, tokenizer)
    others = [i for i in stops if i != tokenizer.eos_token_id]
    return others[0] if others else tokenizer.eos_token_id


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
        ("eot", writer.add_eot_token_id),
    ):
        if meta[key] is not None:
            add(meta[key])
    writer.add_add_bos_token(meta["add_bos"])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


def _tensor_type(shape, gguf_type: str, name: str, output_name: str):
    """The ``GGMLQuantizationType`` one tensor is stored as (norms, biases and rows that do not
    fill whole blocks keep a wider type).

    ``output_name`` is the matrix that produces the logits (``output.weight``, or
    ``token_embd.weight`` when the embeddings are tied). Below 8 bits it is kept at q8_0, as
    llama.cpp's own quantizer keeps it wider: every logit goes through it.
    """
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    if len(shape) <= 1 or name.endswith("_norm.weight") or gguf_type == "f32":
        return Q.F32
    qtype = Q[QUANTS[gguf_type].ggml_type]
    if name == output_name and qtype in (Q.Q4_0, Q.Q5_0):
        qtype = Q.Q8_0
    block = GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else Q.F16


def _nbytes(shape, qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def _encode(data, qtype):
    """``data`` (float32 numpy) as the bytes of ``qtype`` (float arrays for F32/F16)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if qtype == Q.F32:
        return data.astype(np.float32)
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quants.quantize(data, qtype)


def _tensors(model, arch: str, source=None):
    """``(gguf_name, hf_name, shape)`` in file order, and a function giving one tensor's data.

    The data of a tensor (float32 numpy, in llama.cpp's layout) is produced only when asked
    for, so at most one converted tensor exists at a time. ``source`` (a
    :class:`~tunesmith.export.lazy_merge.MergedTensors`) computes each merged tensor on demand;
    without it the tensors are ``model``'s own.
    """
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    name_map = gguf.get_tensor_name_map(
        {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch],
        config.num_hidden_layers,
    )
    if source is None:
        state = model.state_dict()
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        source_tensor = state.__getitem__
    else:
        shapes, source_tensor = source.shapes(), source.tensor
    entries = []
    for hf_name, shape in shapes.items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when no `output` tensor is present
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserInputError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        entries.append((gguf_name, hf_name, shape))

    def data(gguf_name: str, hf_name: str):
        array = source_tensor(hf_name).detach().float().cpu().numpy()
        if arch == "llama" and ".attn_q." in gguf_name:
            return _permute_rotary(array, n_head)
        if arch == "llama" and ".attn_k." in gguf_name:
            return _permute_rotary(array, n_kv)
        return array

    return entries, data


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
    model,
    tokenizer,
    path: Path,
    gguf_type: str = "f16",
    name: str | None = None,
    *,
    tensors=None,
) -> Path:
    """Write ``model`` (merged, any float dtype) + ``tokenizer`` to the GGUF file ``path``.

    ``gguf_type`` is one of :data:`GGUF_TYPES` (the types the ``gguf`` package encodes).
    ``tensors``: a :class:`~tunesmith.export.lazy_merge.MergedTensors` of ``model`` (the adapted
    model, unmerged) that folds each layer when it is written; ``model`` then only supplies
    the config and the stop tokens.

    Raises:
        UserInputError: unsupported architecture, tokenizer or tensor type.
    """
    import gguf
    import numpy as np

    arch = check_architecture(model.config)
    if gguf_type not in GGUF_TYPES:
        raise UserInputError(
            f"--quant {gguf_type!r} is not written by the gguf package; "
            f"expected one of {', '.join(GGUF_TYPES)}"
        )
    meta = tokenizer_metadata(tokenizer, model.config.vocab_size, arch)
    meta["eot"] = _end_of_turn_id(model, tokenizer)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.upper()]])
    writer.add_name(name or getattr(model.config, "_name_or_path", "") or arch)
    _add_hparams(writer, model.config, arch)
    writer.add_file_type(gguf.LlamaFileType[QUANTS[gguf_type].file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, meta)
    entries, data = _tensors(model, arch, tensors)
    names = {gguf_name for gguf_name, _, _ in entries}
    output_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    types = [_tensor_type(shape, gguf_type, n, output_name) for n, _, shape in entries]
    for (gguf_name, _, shape), qtype in zip(entries, types, strict=True):
        # The logical shape with a float32 placeholder dtype: the writer records shape + type.
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, qtype), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for (gguf_name, hf_name, _), qtype in zip(entries, types, strict=True):
        writer.write_tensor_data(_encode(data(gguf_name, hf_name), qtype))
    writer.close()
    return Path(path)
