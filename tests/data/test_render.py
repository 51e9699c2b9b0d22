"""Loss masks from chat-template offsets, checked token by token."""

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.records import Conversation
from tunesmith.data.render import (
    FALLBACK_TEMPLATES,
    IGNORE_INDEX,
    ensure_chat_template,
    render_example,
    render_prompt,
)
from tunesmith.errors import UserInputError


def conv(*pairs, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for u, a in pairs:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return Conversation.from_messages(msgs)


def trained_text(tok, r):
    return tok.decode([t for t in r.labels if t != IGNORE_INDEX])


def test_mask_covers_exactly_the_prompt_tokens():
    tok = make_tokenizer()
    c = conv(("How many patients?", "SELECT COUNT(*) FROM patients"), system="Write SQL.")
    r = render_example(tok, c)
    prompt_ids = tok(render_prompt(tok, c), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert r.input_ids[:n] == prompt_ids
    assert all(label == IGNORE_INDEX for label in r.labels[:n])
    # Every answer token and the end-of-turn token are trained, the trailing newline is not.
    answer = r.input_ids[n:]
    assert r.labels[n:-1] == answer[:-1]
    assert tok.decode(r.input_ids[n:-1]) == "SELECT COUNT(*) FROM patients<|im_end|>"
    assert r.labels[-1] == IGNORE_INDEX and tok.decode([r.input_ids[-1]]) == "\n"


def test_every_assistant_turn_is_trained_in_multi_turn():
    tok = make_tokenizer()
    c = conv(("a?", "first answer"), ("b?", "second answer"))
    r = render_example(tok, c)
    assert trained_text(tok, r) == "first answer<|im_end|>second answer<|im_end|>"


def test_train_on_prompt_trains_everything():
    tok = make_tokenizer()
    r = render_example(tok, conv(("q", "a")), train_on_prompt=True)
    assert r.labels == r.input_ids


@pytest.mark.parametrize("name", sorted(FALLBACK_TEMPLATES))
def test_fallback_templates_mask_answer_and_eos(name):
    tok = make_tokenizer()
    ensure_chat_template(tok, name)
    r = render_example(
        tok, conv(("List patients", "SELECT name FROM patients"), system="Be brief.")
    )
    text = trained_text(tok, r)
    assert "SELECT name FROM patients" in text
    assert "List patients" not in tok.decode(
        [t for t, lab in zip(r.input_ids, r.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert tok.eos_token in text


def test_unknown_template_is_a_clear_error():
    with pytest.raises(UserInputError, match="unknown chat template"):
        ensure_chat_template(make_tokenizer(), "vicuna-9")


@pytest.mark.embedded
def test_smollm2_template_masks_token_by_token():
    from tunesmith.models.loading import load_tokenizer

    tok = load_tokenizer("embedded")
    c = conv(("How many doctors?", "SELECT COUNT(*) FROM doctors"), system="Translate.")
    r = render_example(tok, c)
    pieces = [
        (tok.decode([i]), lab != IGNORE_INDEX) for i, lab in zip(r.input_ids, r.labels, strict=True)
    ]
    trained = [p for p, t in pieces if t]
    assert "".join(trained) == "SELECT COUNT(*) FROM doctors<|im_end|>"
    first = next(i for i, (_, t) in enumerate(pieces) if t)
    assert "".join(p for p, _ in pieces[:first]).endswith("<|im_start|>assistant\n")
