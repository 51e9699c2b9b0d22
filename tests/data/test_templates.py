"""Loss masks of every fallback template and of real chat templates, run by run of tokens.

Each test renders a multi-turn conversation, groups consecutive tokens by whether they are
trained, and compares the decoded groups with the exact expected text: assistant answers and
their end-of-turn token trained, everything else (system, user, role headers, separators) not.
"""

import pytest

from tests.tiny import make_tokenizer
from tunesmith.data.dataset import tokenize_conversations
from tunesmith.data.records import Conversation
from tunesmith.data.render import (
    FALLBACK_TEMPLATES,
    IGNORE_INDEX,
    ensure_chat_template,
    render_example,
)
from tunesmith.errors import UserInputError

A1, A2 = "SELECT name FROM patients", "SELECT COUNT(*) FROM patients"


def conversation(system: str | None = "Be brief."):
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [
        {"role": "user", "content": "List patients"},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": "Count them"},
        {"role": "assistant", "content": A2},
    ]
    return Conversation.from_messages(msgs)


def runs(tok, conv) -> list[tuple[str, bool]]:
    """(decoded text, trained) per maximal run of tokens with the same flag."""
    r = render_example(tok, conv)
    out: list[tuple[list[int], bool]] = []
    for i, lab in zip(r.input_ids, r.labels, strict=True):
        trained = lab != IGNORE_INDEX
        assert not trained or lab == i  # a trained label is the token itself
        if out and out[-1][1] == trained:
            out[-1][0].append(i)
        else:
            out.append(([i], trained))
    return [(tok.decode(ids), t) for ids, t in out]


EXPECTED = {
    "chatml": [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nList patients<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        (A1 + "<|im_end|>", True),
        ("\n<|im_start|>user\nCount them<|im_end|>\n<|im_start|>assistant\n", False),
        (A2 + "<|im_end|>", True),
        ("\n", False),
    ],
    "alpaca": [
        ("Be brief.\n\n### Instruction:\nList patients\n\n### Response:\n", False),
        (A1 + "<|im_end|>", True),
        ("\n\n### Instruction:\nCount them\n\n### Response:\n", False),
        (A2 + "<|im_end|>", True),
        ("\n\n", False),
    ],
    "llama-2": [
        ("<|im_start|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nList patients [/INST]", False),
        (" " + A1 + " <|im_end|>", True),
        ("<|im_start|>[INST] Count them [/INST]", False),
        (" " + A2 + " <|im_end|>", True),
    ],
}  # fmt: skip


def test_every_fallback_template_has_an_expectation_and_a_config_value():
    import typing

    from tunesmith.config import TrainConfig

    assert set(EXPECTED) == set(FALLBACK_TEMPLATES)
    literal = typing.get_args(TrainConfig.model_fields["template"].annotation)[0]
    assert set(typing.get_args(literal)) == set(FALLBACK_TEMPLATES)


@pytest.mark.parametrize("name", sorted(FALLBACK_TEMPLATES))
def test_fallback_template_masks_run_by_run(name):
    tok = make_tokenizer()
    ensure_chat_template(tok, name)
    assert tok.chat_template == FALLBACK_TEMPLATES[name]
    assert runs(tok, conversation()) == EXPECTED[name]
    # The whole pipeline accepts it: every record trained, the end-of-turn token trained.
    tokenize_conversations(tok, [conversation()], seq_len=256)


def base_tokenizer():
    """A base-model tokenizer: no chat template, and an EOS that is not <|im_end|>."""
    tok = make_tokenizer()
    tok.chat_template = None
    tok.eos_token = "<|endoftext|>"
    return tok


def test_no_template_and_no_flag_names_the_flag():
    with pytest.raises(UserInputError, match="--template chatml"):
        ensure_chat_template(base_tokenizer())


def test_chatml_fallback_on_a_base_model_trains_its_eos():
    # <|im_end|> is not the base model's EOS: the turn also ends with the EOS, trained, so the
    # model learns to stop where generation stops.
    tok = base_tokenizer()
    ensure_chat_template(tok, "chatml")
    got = runs(tok, conversation(system=None))
    assert got == [
        ("<|im_start|>user\nList patients<|im_end|>\n<|im_start|>assistant\n", False),
        (A1 + "<|im_end|><|endoftext|>", True),
        ("\n<|im_start|>user\nCount them<|im_end|>\n<|im_start|>assistant\n", False),
        (A2 + "<|im_end|><|endoftext|>", True),
        ("\n", False),
    ]
    tokenize_conversations(tok, [conversation()], seq_len=256)


@pytest.mark.parametrize(
    ("name", "fmt"), [("alpaca", "{}<|endoftext|>"), ("llama-2", " {} <|endoftext|>")]
)
def test_other_fallbacks_end_turns_with_the_base_eos(name, fmt):
    tok = base_tokenizer()
    ensure_chat_template(tok, name)
    trained = [text for text, t in runs(tok, conversation()) if t]
    assert trained == [fmt.format(A1), fmt.format(A2)]


# A Qwen2.5-style ChatML template: injects a default system prompt, trims contents and uses
# whitespace control, so prefix renders are not simple string concatenations of the messages.
QWEN_STYLE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def test_chatml_style_template_built_here_masks_run_by_run():
    tok = make_tokenizer()
    tok.chat_template = QWEN_STYLE
    ensure_chat_template(tok)  # has a template: left as it is
    assert tok.chat_template == QWEN_STYLE
    msgs = conversation(system=None).to_messages()
    msgs[1]["content"] = A1 + "  "  # trailing spaces the template trims away
    got = runs(tok, Conversation.from_messages(msgs))
    assert got == [
        ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
         "<|im_start|>user\nList patients<|im_end|>\n<|im_start|>assistant\n", False),
        (A1 + "<|im_end|>", True),
        ("\n<|im_start|>user\nCount them<|im_end|>\n<|im_start|>assistant\n", False),
        (A2 + "<|im_end|>", True),
        ("\n", False),
    ]  # fmt: skip


@pytest.mark.embedded
def test_smollm2_template_masks_multi_turn_run_by_run():
    from tunesmith.models.loading import load_tokenizer

    tok = load_tokenizer("embedded")
    got = runs(tok, conversation(system=None))
    # SmolLM2 injects its own default system prompt when none is given.
    assert got[0][0].startswith("<|im_start|>system\n") and not got[0][1]
    assert got[0][0].endswith("<|im_start|>user\nList patients<|im_end|>\n<|im_start|>assistant\n")
    assert got[1:] == [
        (A1 + "<|im_end|>", True),
        ("\n<|im_start|>user\nCount them<|im_end|>\n<|im_start|>assistant\n", False),
        (A2 + "<|im_end|>", True),
        ("\n", False),
    ]
    assert tok.eos_token == "<|im_end|>"
