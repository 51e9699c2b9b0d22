"""MAM: prefix tuning at attention + a scaled parallel adapter at the FFN, as one peft tuner.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR 2022
(arXiv:2110.04366), §4.4 "Mix-and-Match adapter": prefix tuning with a small budget at the
attention (l = 30 prefix vectors, Eq. 5: head = Attn(x·W_q, [P_k; C·W_k], [P_v; C·W_v])) plus a
parallel adapter with scaled composition at the FFN (Eq. 10: h <- FFN(x) + s·f(x), s = 4).

Why one tuner: a ``PeftModel`` holds one peft type, and peft's prefix tuning lives in
``PeftModel.forward`` (prompt learning), not in a tuner, so it cannot be stacked with a second
injected method. This tuner therefore owns both parts:

- the FFN part reuses :class:`BottleneckLayer` (parallel insertion, wrapping ``mlp``);
- the attention part stores the prefix keys/values on the tuner (``mam_prefix``, shape
  (layers, 2, kv_heads, l, head_dim)) and writes them into the KV cache with a forward pre-hook
  on the decoder stack. Because every attention layer already concatenates cached keys/values
  before its own, this is Eq. 5 without touching any attention code, and it works the same in a
  plain forward and inside ``generate`` (the hook fills an empty cache once and widens the
  padding mask by l on every step).

Both parts are ordinary tuner state, so peft saves, loads, marks trainable and unloads them.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from tunesmith.methods.tuners.bottleneck.model import BottleneckModel
from tunesmith.methods.tuners.mam.config import MamConfig
from tunesmith.shape import model_shape


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module that owns the layers and the KV cache argument)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def _cache_kwarg(decoder: nn.Module) -> str:
    # transformers 5 renamed `past_key_values` to `cache`; accept both.
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class MamModel(BottleneckModel):
    """peft tuner for MAM; see the module docstring for the design."""

    prefix: str = "mam_"

    def __init__(self, model: nn.Module, peft_config: Any, adapter_name: str, **kw: Any) -> None:
        self._prefix_enabled = True
        decoder = _decoder(model)
        self._cache_kwarg = _cache_kwarg(decoder)
        self._decoder_config = decoder.config
        super().__init__(model, peft_config, adapter_name, **kw)
        self._hook = decoder.register_forward_pre_hook(self._inject_prefix, with_kwargs=True)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kw: Any) -> None:
        config: MamConfig = self.peft_config[adapter_name]
        g = model_shape(model.config)
        ref = next(p for p in model.parameters() if p.is_floating_point())
        shape = (g.layers, 2, g.kv_heads, config.num_virtual_tokens, g.head_dim)
        if config.inference_mode:
            prefix = torch.zeros(shape)  # the saved prefix is loaded over it
        elif config.prefix_init == "tokens":
            prefix = self._prefix_from_tokens(model, config)
        else:
            prefix = torch.empty(shape).normal_(std=config.prefix_init_std)
        if not hasattr(self, "mam_prefix"):
            self.mam_prefix = nn.ParameterDict({})
        # fp32 master copy, like peft's upcast of 16-bit adapters; cast to the compute dtype on use.
        self.mam_prefix[adapter_name] = nn.Parameter(prefix.to(ref.device, torch.float32))
        super().inject_adapter(model, adapter_name, **kw)

    def _prefix_from_tokens(self, model: nn.Module, config: MamConfig) -> torch.Tensor:
        """Keys/values the base model computes for l real tokens (Li & Liang 2021, §7.2: real-word
        activations train better than random prefixes). At init the prefix therefore acts like a
        short real context; the ids are recorded in the config."""
        from transformers import DynamicCache

        if config.prefix_token_ids is None:
            vocab = model_shape(model.config).vocab
            config.prefix_token_ids = torch.randint(vocab, (config.num_virtual_tokens,)).tolist()
        decoder = _decoder(model)
        ref = next(p for p in model.parameters() if p.is_floating_point())
        ids = torch.tensor([config.prefix_token_ids], device=ref.device)
        cache = DynamicCache(config=decoder.config)
        enabled, self._prefix_enabled = self._prefix_enabled, False  # a second adapter: base only
        was_training = decoder.training
        try:
            with torch.no_grad():
                decoder.eval()(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache})
        finally:
            decoder.train(was_training)
            self._prefix_enabled = enabled
        keys = torch.stack([layer.keys[0] for layer in cache.layers])  # (L, kv, l, hd)
        values = torch.stack([layer.values[0] for layer in cache.layers])
        return torch.stack([keys, values], dim=1).float()  # (L, 2, kv, l, hd)

    def _inject_prefix(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        name = self.active_adapters[0]
        if not self._prefix_enabled or name not in self.mam_prefix:
            return None
        from transformers import DynamicCache

        if module.training and getattr(self.model, "is_gradient_checkpointing", False):
            # Checkpointed layers drop the cache (transformers sets it to None), and the prefix
            # travels in the cache; peft refuses prefix tuning with checkpointing for the same reason.
            raise ValueError("MAM's prefix does not work with gradient checkpointing; disable it")
        embed = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
        dtype = embed.weight.dtype if embed is not None else torch.float32
        prefix = self.mam_prefix[name].to(dtype)  # (L, 2, kv, l, hd)
        n_prefix = prefix.shape[3]
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None and args:
            inputs = args[0]
        batch, length = inputs.shape[:2]
        cache = kwargs.get(self._cache_kwarg)
        if cache is None:
            cache = DynamicCache(config=self._decoder_config)
            kwargs[self._cache_kwarg] = cache
        if cache.get_seq_length() == 0:  # a fresh sequence: the prefix goes first
            for layer_idx in range(prefix.shape[0]):
                kv = (
                    prefix[layer_idx].unsqueeze(1).expand(-1, batch, -1, -1, -1)
                )  # (2, B, kv, l, hd)
                cache.update(kv[0], kv[1], layer_idx)
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            # Explicit positions count the caller's tokens only; the prefix occupies 0..l-1, as
            # when the model derives positions from the cache length itself.
            kwargs["position_ids"] = position_ids + n_prefix
        mask = kwargs.get("attention_mask")
        if (
            mask is not None
            and mask.dim() == 2
            and mask.shape[1] + n_prefix == (cache.get_seq_length() + length)
        ):
            # The caller's padding mask does not know about the prefix: the prefix is always visible.
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n_prefix), mask], dim=1)
        return args, kwargs

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        self._prefix_enabled = enabled
        super()._enable_adapter_layers(enabled)

    def _unload_and_optionally_merge(self, merge: bool = True, **kw: Any) -> nn.Module:
        model = super()._unload_and_optionally_merge(merge=merge, **kw)
        self._hook.remove()
        return model
