"""Render conversations with the model's chat template and build the loss mask.

The mask comes from character offsets of the rendered assistant spans, mapped to tokens via
the fast tokenizer's offset mapping — not from searching token strings, which breaks when a
template merges or re-spaces text. A span is found by rendering the conversation up to an
assistant turn (with the generation prompt) and through it: the difference is exactly what
the model must produce, including its end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.data.records import Conversation
from tunesmith.errors import DataError, UserInputError

IGNORE_INDEX = -100

# Fallback templates for base models without a chat template, selectable by name.
FALLBACK_TEMPLATES: dict[str, str] = {
    # A base model's EOS is often not <|im_end|> (which it then reads as plain text): an
    # assistant turn ends with the EOS as well, so the model learns to stop.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
        "{% if message['role'] == 'assistant' and eos_token != '<|im_end|>' %}{{ eos_token }}{% endif %}"
        "{{ '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
        "{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + (sys if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}


@dataclass(frozen=True)
class Rendered:
    """One tokenized example. ``labels`` is ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def ensure_chat_template(tokenizer, template: str | None = None) -> None:
    """Use the tokenizer's own template; apply a named fallback when it has none."""
    if template:
        if template not in FALLBACK_TEMPLATES:
            raise UserInputError(
                f"unknown chat template {template!r}; choose one of {', '.join(FALLBACK_TEMPLATES)}"
            )
        tokenizer.chat_template = FALLBACK_TEMPLATES[template]
    elif not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            "the tokenizer has no chat template; pass --template " + "|".join(FALLBACK_TEMPLATES)
        )


def _render(tokenizer, messages: Sequence[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(tokenizer, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant turn (with end-of-turn)."""
    messages = conv.to_messages()
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if full.startswith(through) and through.startswith(before):
            start, end = len(before), len(through.rstrip())
        else:
            # Templates that rewrite earlier turns (e.g. drop past reasoning) break the prefix
            # property; locate the content itself after the previous span instead.
            start = full.find(m["content"], cursor)
            if start < 0:
                raise DataError("assistant turn not found in rendered template", conv.source)
            end = start + len(m["content"])
            eot = getattr(tokenizer, "eos_token", None)
            if eot and full.startswith(eot, end):
                end += len(eot)
        spans.append((start, end))
        cursor = end
    return full, spans


def render_example(
    tokenizer, conv: Conversation, *, train_on_prompt: bool = False, max_len: int | None = None
) -> Rendered:
    """Tokenize a conversation for training with labels on assistant tokens only."""
    text, spans = assistant_spans(tokenizer, conv)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for j, (s, e) in enumerate(enc["offset_mapping"]):
        # A token is trained when it starts inside an assistant span; zero-width tokens
        # (s == e) that sit at a span's end are the template's special end-of-turn tokens.
        if train_on_prompt or any(a <= s < b or (s == e and a < s <= b) for a, b in spans):
            labels[j] = ids[j]
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return Rendered(ids, labels)


def render_prompt(tokenizer, conv: Conversation) -> str:
    """The text the model sees at generation time (all turns before the final answer)."""
    return _render(
        tokenizer, [{"role": t.role, "content": t.content} for t in conv.prompt_turns], True
    )
