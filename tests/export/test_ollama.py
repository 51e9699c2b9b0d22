"""The Ollama Modelfile: the chat template as per-role wrapping, stop strings, parameters."""

from __future__ import annotations

import pytest

from tests.tiny import CHATML_TEMPLATE, make_tokenizer
from tunesmith.errors import UserInputError
from tunesmith.export.ollama import chat_parts, go_template, modelfile_text

# SmolLM2-Instruct's template: ChatML plus a default system prompt when none is given.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "How many patients?"}],
    [{"role": "system", "content": "SQL only."}, {"role": "user", "content": "List doctors."}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
]


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, SMOLLM2_TEMPLATE])
def test_parts_render_exactly_as_the_jinja_template(template):
    tok = make_tokenizer()
    parts = chat_parts(tok, template)
    assert parts.wrap["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert parts.generation_prompt == "<|im_start|>assistant\n"
    for messages in CONVERSATIONS:
        want = tok.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert parts.render(messages) == want
    assert ("SmolLM" in parts.preamble) == (template == SMOLLM2_TEMPLATE)


def test_go_template_for_chatml():
    parts = chat_parts(make_tokenizer(), CHATML_TEMPLATE)
    assert go_template(parts) == (
        '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}{{ end }}'
        "{{ range .Messages }}"
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        "{{ end }}{{ end }}<|im_start|>assistant\n"
    )


def test_modelfile_lines():
    tok = make_tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    text = modelfile_text("model.q4_k_m.gguf", tok, [end, tok.pad_token_id], 32768)
    lines = text.splitlines()
    assert "FROM ./model.q4_k_m.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER temperature 0" in lines and "PARAMETER num_ctx 8192" in lines
    assert 'TEMPLATE """{{ if or' in text and "ollama create NAME -f Modelfile" in text


def test_template_that_is_not_role_wrapping_is_refused():
    tok = make_tokenizer()
    rewriting = (
        "{% for message in messages %}{{ message['content'] | upper }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(UserInputError, match="--ollama"):
        chat_parts(tok, rewriting)
