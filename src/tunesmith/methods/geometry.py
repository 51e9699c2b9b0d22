"""Layer shapes of a decoder, read from its config alone (no weights loaded).

Every method's ``count_trainable`` is built from these numbers, so ``tunesmith methods`` and the
planner can state a method's size for a model that was never downloaded. The formulas cover the
Llama-style decoders tunesmith targets (Llama, Qwen2, Mistral: RMSNorm, gated SiLU FFN, grouped
KV heads); tests check them against real instantiated models.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# SmolLM2-135M-Instruct (the embedded default) as published in its config.json, for counts
# without loading anything (`tunesmith methods --model-config embedded-size`).
SMOLLM2_135M = SimpleNamespace(
    model_type="llama",
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
)


@dataclass(frozen=True)
class Geometry:
    """The sizes that parameter formulas need.

    Attributes:
        hidden: model width d.
        layers: number of decoder blocks L.
        heads: query heads H.
        kv_heads: key/value heads (grouped-query attention).
        head_dim: per-head width.
        intermediate: FFN inner width.
        vocab: vocabulary size V.
        tied: whether the LM head shares the input embedding.
        qkv_bias: q/k/v projections carry a bias (Qwen2).
        o_bias: the attention output projection carries a bias.
        mlp_bias: the FFN projections carry biases.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (or values): kv_heads · head_dim."""
        return self.kv_heads * self.head_dim


def geometry(config: Any) -> Geometry:
    """Read a :class:`Geometry` from a transformers config (or any object with its fields)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    heads = config.num_attention_heads
    attention_bias = getattr(config, "attention_bias", None)
    # Qwen2 hard-codes biases on q/k/v (not o) and has no `attention_bias` field.
    qwen = getattr(config, "model_type", "").startswith("qwen2")
    return Geometry(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=bool(attention_bias) if attention_bias is not None else qwen,
        o_bias=bool(attention_bias),
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
    )


def linear_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear projection in one decoder block."""
    g = geometry(config)
    q_dim = g.heads * g.head_dim
    return {
        "q_proj": (g.hidden, q_dim),
        "k_proj": (g.hidden, g.kv_dim),
        "v_proj": (g.hidden, g.kv_dim),
        "o_proj": (q_dim, g.hidden),
        "gate_proj": (g.hidden, g.intermediate),
        "up_proj": (g.hidden, g.intermediate),
        "down_proj": (g.intermediate, g.hidden),
    }


def target_shapes(config: Any, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(in, out) of every targeted linear across all blocks (one entry per block and name)."""
    shapes = linear_shapes(config)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"no shape rule for module(s) {unknown}; known: {sorted(shapes)}")
    return [shapes[n] for n in names] * geometry(config).layers


def block_params(config: Any) -> int:
    """Parameters of one decoder block: attention + FFN + two RMSNorm weights."""
    g = geometry(config)
    weights = sum(i * o for i, o in linear_shapes(config).values())
    biases = g.qkv_bias * (g.heads * g.head_dim + 2 * g.kv_dim) + g.o_bias * g.hidden
    biases += g.mlp_bias * (2 * g.intermediate + g.hidden)
    return weights + biases + 2 * g.hidden


def model_params(config: Any) -> int:
    """All parameters: embeddings, blocks, final norm and (untied) LM head."""
    g = geometry(config)
    head = 0 if g.tied else g.vocab * g.hidden
    return g.vocab * g.hidden + g.layers * block_params(config) + g.hidden + head
