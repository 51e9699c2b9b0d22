"""Greedy generation of a prefix-tuned model applies the learned prefix (eval/generate.py)."""

import torch

from tests.tiny import make_tiny_model, make_tokenizer
from tunesmith.eval.generate import generate
from tunesmith.methods import MethodArgs, get_method


def test_prefix_tuned_generation_uses_the_prefix():
    tok = make_tokenizer()
    model = get_method("prefix").apply(
        make_tiny_model("llama"), MethodArgs(num_virtual_tokens=4, target=())
    )
    with torch.no_grad():  # a prefix far from its init, so it changes what the model says
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    prompts = ["count the patients", "which city"]
    tuned = generate(model, tok, prompts, max_new_tokens=8)
    with model.disable_adapter():
        plain = generate(model, tok, prompts, max_new_tokens=8)
    assert [g.text for g in tuned] != [g.text for g in plain]
    # The first token is the argmax of the prefixed forward. (The tiny model does not reproduce
    # the demo case where generate() dropped the prefix; RESULTS.md has that check.)
    enc = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        first = model(input_ids=enc["input_ids"]).logits[0, -1].argmax()
    assert tuned[0].text.startswith(tok.decode([int(first)], skip_special_tokens=True).strip())


def test_base_side_of_a_prefix_model_takes_the_batched_generate():
    from tunesmith.eval import generate as gen

    tok = make_tokenizer()
    model = get_method("prefix").apply(
        make_tiny_model("llama"), MethodArgs(num_virtual_tokens=4, target=())
    )
    base = make_tiny_model("llama")  # same seed: the same weights as the wrapped base
    prompts = ["count the patients", "which city"]
    assert gen._prefix_tuned(model)
    with model.disable_adapter():
        assert not gen._prefix_tuned(model)
        plain = generate(model, tok, prompts, max_new_tokens=8)
    assert gen._prefix_tuned(model)  # the adapter is back after the block
    assert [g.text for g in plain] == [
        g.text for g in generate(base, tok, prompts, max_new_tokens=8)
    ]
