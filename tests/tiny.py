"""Builders for tiny real models and tokenizers, so tests never need a model hub.

The tokenizer is a byte-level BPE trained in a fraction of a second on a fixed corpus
(deterministic), wrapped in ``PreTrainedTokenizerFast`` with a ChatML chat template. The
models are real transformers architectures instantiated from small configs with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "SELECT name FROM patients WHERE city = 'Lyon' ORDER BY name;",
    "SELECT COUNT(*) FROM visits JOIN doctors ON visits.doctor_id = doctors.id;",
    "How many patients live in Lyon? Which doctor has the most visits?",
    "The quick brown fox jumps over the lazy dog. 0123456789 () , ; * = < > ' \"",
    "You are a helpful assistant. user assistant system",
    "List the prescriptions given after 2024-01-01 grouped by drug.",
] * 20


def make_tokenizer(vocab_size: int = 512):
    """A deterministic byte-level BPE tokenizer with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(arch: str = "llama", vocab_size: int = 512, seed: int = 0, **overrides):
    """A 2-layer, hidden-64 causal LM of the given architecture, deterministic weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model.eval()


def build_tiny_checkpoint(out_dir: Path, arch: str = "llama") -> Path:
    """Save a tiny model + tokenizer as a local checkpoint directory (safetensors)."""
    tok = make_tokenizer()
    model = make_tiny_model(arch, vocab_size=len(tok))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return Path(out_dir)
