"""The causal-LM loss, summed over trained tokens.

Fast path: run the transformer body, then apply the vocabulary projection only at positions
whose next token is trained. Prompt tokens need no logits, and the (B, T, V) logits tensor is
the largest activation of a small model (SmolLM2: V = 49152 vs hidden 576), so this saves
both time and memory. Eligible only when the model is a plain causal LM whose body is
``.model`` and head ``.lm_head`` (true for Llama/Qwen2/Mistral/Gemma, incl. peft's
LoRA-style injection); prompt-learning methods (prefix, prompt) change the forward and use the
reference path, which is ``model(..., labels=...)`` as transformers defines it.

The last step, the head and the cross-entropy over its logits, is a parameter: the training
loop passes its fast-path handle's choice (:class:`tunesmith.train.fastpath.FastPaths`); other
callers (evaluation) get :func:`~tunesmith.loss.head_ce.head_cross_entropy_sum`, the device's
best (without grad, as in evaluation: the head, then the chunked cross-entropy on CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunesmith.data.dataset import Batch
from tunesmith.data.packing import attention_inputs
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.loss.head_ce import head_cross_entropy_sum


def causal_lm_module(model):
    """The ``*ForCausalLM`` module under any peft wrapper, or None if the fast path is not eligible."""
    from peft import PeftModel

    inner = model
    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        inner = model.get_base_model()
    # Soft-capped logits (Gemma-2) are computed differently inside the model's own forward.
    if getattr(inner.config, "final_logit_softcapping", None):
        return None
    if hasattr(inner, "model") and hasattr(inner, "lm_head"):
        return inner
    return None


def fast_path_eligible(model) -> bool:
    return causal_lm_module(model) is not None


def loss_sum(
    model,
    batch: Batch,
    fast: bool = True,
    head_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = (
        head_cross_entropy_sum
    ),
) -> torch.Tensor:
    """Sum of token cross-entropies over trained positions (fp32). Divide by the token count.

    Args:
        model: The causal LM (peft-wrapped or not).
        batch: The pass's tokens, labels and masks.
        fast: Use the logits-at-trained-positions path where the model is eligible.
        head_loss: ``(lm_head, hidden (N, C), targets (N,)) -> fp32 sum`` on the fast path.
    """
    lm = causal_lm_module(model) if fast else None
    # Packed rows (position_ids set) need a block-diagonal mask instead of the padding mask.
    attn = attention_inputs(model, batch.attention_mask, batch.position_ids)
    if lm is None:
        out = model(input_ids=batch.input_ids, labels=batch.labels, **attn)
        # transformers returns the mean over trained tokens; turn it back into a sum.
        return out.loss.float() * batch.num_trained
    attn.setdefault("use_cache", False)
    hidden = lm.model(input_ids=batch.input_ids, **attn).last_hidden_state  # (B, T, C)
    targets = batch.labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]  # (N, C): only positions whose next token is trained
    return head_loss(lm.lm_head, h, targets[keep])
