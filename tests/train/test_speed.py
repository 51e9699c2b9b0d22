"""Device-dependent speed choices: eager attention on CPU (same loss and gradients as sdpa)."""

import pytest
import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.data.dataset import collate
from tunesmith.loss import loss_sum
from tunesmith.train.speed import EAGER_MAX_SEQ_LEN, train_attention

from .test_loop import _varied_examples

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_eager_only_on_cpu_and_short_rows():
    assert train_attention(CPU, 256) == "eager"
    assert train_attention(CPU, EAGER_MAX_SEQ_LEN + 1) == "sdpa"
    assert train_attention(CUDA, 256) == "sdpa"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_eager_attention_gives_the_sdpa_loss_and_gradients(arch):
    """The kernel choice is a speed choice only: padded batches, same loss, same gradients."""
    tok = make_tokenizer()
    batch = collate(_varied_examples(tok, n=6), tok.pad_token_id)
    assert batch.num_tokens < batch.input_ids.numel()  # padding present, so masks matter
    out = {}
    for impl in ("sdpa", "eager"):
        model = make_tiny_model(arch, attn_implementation=impl).train()
        loss = loss_sum(model, batch)
        loss.backward()
        out[impl] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(out["eager"][0], out["sdpa"][0], rtol=1e-5, atol=1e-4)
    for n, g in out["sdpa"][1].items():
        torch.testing.assert_close(out["eager"][1][n], g, rtol=1e-4, atol=1e-5)


def test_the_memory_plan_counts_the_eager_probabilities():
    """Training plans with the kernel it loads: eager keeps b x heads x s x s for backward."""
    from tunesmith.plan import plan_for_run

    config = make_tiny_model("llama").config
    kw = dict(device="cpu", method="lora", batch_size=8, seq_len=256, precision="fp32")
    eager = plan_for_run(config, attn="eager", **kw)
    sdpa = plan_for_run(config, attn="sdpa", **kw)
    assert eager.total_bytes > sdpa.total_bytes


@pytest.mark.parametrize("method", ["lora", "rslora", "dora"])
def test_bf16_adapter_compute_matches_the_fp32_adapter_path(method):
    """LoRA (and DoRA) under autocast with peft's input cast off: bf16 math, fp32 master weights
    and grads."""
    from tunesmith.methods import MethodArgs, get_method
    from tunesmith.train.speed import adapter_autocast, compute_context

    assert adapter_autocast(method, "bf16") and not adapter_autocast(method, "fp32")
    assert not adapter_autocast("houlsby", "bf16") and not adapter_autocast("ia3", "bf16")
    tok = make_tokenizer()
    batch = collate(_varied_examples(tok, n=6), tok.pad_token_id)
    out = {}
    for name, autocast, keep in (("reference", None, False), ("bf16", torch.bfloat16, True)):
        base = make_tiny_model("llama").to(torch.bfloat16)
        args = MethodArgs(rank=8, alpha=16, dropout=0.0, target=("q_proj", "v_proj"))
        model = get_method(method).apply(base, args).train()
        for n, p in model.named_parameters():  # a non-zero B, so the adapter path matters
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
        with compute_context(model, CPU, autocast, keep):
            loss = loss_sum(model, batch)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
        out[name] = (loss.detach().float(), grads)
        # Casting is back on afterwards (generation after training runs without autocast).
        assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules())
    # bf16 rounding of the adapter path: within a fraction of a percent of the loss.
    torch.testing.assert_close(out["bf16"][0], out["reference"][0], rtol=5e-3, atol=0)
    for n, g in out["reference"][1].items():
        assert out["bf16"][1][n].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(out["bf16"][1][n].flatten(), g.flatten(), dim=0)
        assert cos > 0.99, (n, float(cos))


def test_the_input_cast_is_off_inside_the_context_only_and_a_layer_set_off_stays_off():
    """compute_context turns peft's input cast off on every tuner layer (the ones found, or
    the ones a training loop kept) and gives each its own value back afterwards."""
    from tunesmith.methods import MethodArgs, get_method
    from tunesmith.train.speed import compute_context, tuner_layers

    args = MethodArgs(rank=4, alpha=8, dropout=0.0, target=("q_proj", "v_proj"))
    model = get_method("lora").apply(make_tiny_model("llama"), args)
    layers = tuner_layers(model)
    assert len(layers) == 2 * model.config.num_hidden_layers
    layers[0].cast_input_dtype_enabled = False  # a user's own choice
    for kept in (None, layers):
        with compute_context(model, CPU, torch.bfloat16, True, kept):
            assert not any(m.cast_input_dtype_enabled for m in layers)
        assert [m.cast_input_dtype_enabled for m in layers] == [False] + [True] * (len(layers) - 1)
    with compute_context(model, CPU, None, False):  # not asked: untouched
        assert layers[1].cast_input_dtype_enabled
