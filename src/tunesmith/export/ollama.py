"""An Ollama ``Modelfile`` for an exported GGUF: FROM, TEMPLATE, stop strings, parameters.

Ollama does not run Jinja; its TEMPLATE is a Go template. Rather than translating Jinja, we
*render* the model's own chat template with marker contents and read off what it wraps around
each role's message (prefix, suffix), the default system preamble it inserts when a
conversation has no system message, and the generation prompt. The Go template rebuilds the
same text from those pieces; :func:`chat_parts` checks that on sample conversations and refuses
templates that are not plain per-role wrapping (tool calls, content rewriting), so a Modelfile
is never written with a template that renders differently from the one the model learned.

Create the model with ``ollama create NAME -f Modelfile`` in the GGUF's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.atomic import write_text
from tunesmith.errors import UserInputError

MODELFILE = "Modelfile"
ROLES = ("system", "user", "assistant")
_MARK = "\x00{}\x00"


@dataclass(frozen=True)
class ChatParts:
    """A chat template reduced to text around each role's content."""

    wrap: dict[str, tuple[str, str]]  # role -> (prefix, suffix)
    preamble: str  # inserted before the first message when it is not a system message
    generation_prompt: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text these parts give (what the Go template renders)."""
        text = "" if messages and messages[0]["role"] == "system" else self.preamble
        for m in messages:
            pre, post = self.wrap[m["role"]]
            text += pre + m["content"] + post
        return text + self.generation_prompt


def _render(tokenizer, template: str, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def _split(text: str, mark: str, what: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise UserInputError(f"--ollama: the chat template does not show the {what} once")
    pre, post = text.split(mark)
    return pre, post


def chat_parts(tokenizer, template: str) -> ChatParts:
    """Per-role prefixes/suffixes of ``template``, verified on sample conversations.

    Raises:
        UserInputError: the template is not expressible as per-role wrapping.
    """
    sys_msg = {"role": "system", "content": _MARK.format("s")}
    with_sys = _render(tokenizer, template, [sys_msg], False)
    wrap = {"system": _split(with_sys, sys_msg["content"], "system message")}
    for role in ("user", "assistant"):
        msg = {"role": role, "content": _MARK.format(role[0])}
        full = _render(tokenizer, template, [sys_msg, msg], False)
        if not full.startswith(with_sys):
            raise UserInputError("--ollama: the chat template rewrites earlier turns")
        wrap[role] = _split(full[len(with_sys) :], msg["content"], f"{role} message")
    user = {"role": "user", "content": _MARK.format("u")}
    without_sys = _render(tokenizer, template, [user], False)
    preamble = without_sys[: without_sys.index(wrap["user"][0] + user["content"])]
    closed = _render(tokenizer, template, [sys_msg, user], False)
    opened = _render(tokenizer, template, [sys_msg, user], True)
    parts = ChatParts(wrap, preamble, opened[len(closed) :])
    samples = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
    ]
    for messages in samples:
        if parts.render(messages) != _render(tokenizer, template, messages, True):
            raise UserInputError(
                "--ollama: the chat template is not plain per-role wrapping; "
                "write the Modelfile's TEMPLATE by hand"
            )
    return parts


def go_template(parts: ChatParts) -> str:
    """The Ollama (Go text/template) TEMPLATE that renders ``parts`` over ``.Messages``.

    No ``{{-`` trimming: the pieces' own newlines are part of the format.
    """
    pieces = [p for pair in parts.wrap.values() for p in pair]
    pieces += [parts.preamble, parts.generation_prompt]
    if any("{{" in p or '"""' in p for p in pieces):
        raise UserInputError("--ollama: the chat template's text contains '{{' or '\"\"\"'")
    body = ""
    for i, role in enumerate(ROLES):
        pre, post = parts.wrap[role]
        keyword = "if" if i == 0 else "else if"
        body += f'{{{{ {keyword} eq .Role "{role}" }}}}{pre}{{{{ .Content }}}}{post}'
    first_not_system = '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
    return (
        f"{first_not_system}{parts.preamble}{{{{ end }}}}"
        f"{{{{ range .Messages }}}}{body}{{{{ end }}}}{{{{ end }}}}{parts.generation_prompt}"
    )


def modelfile_text(gguf_name: str, tokenizer, stop_ids: list[int], context_length: int) -> str:
    """The Modelfile for ``gguf_name`` (a file in the same directory).

    Parameters: temperature 0 (greedy, the decoding the export was verified with), the
    model's context length (capped at 8192 to keep Ollama's KV cache modest), every stop string.
    """
    template = tokenizer.chat_template
    if not template:
        raise UserInputError("--ollama: the tokenizer has no chat template to write")
    parts = chat_parts(tokenizer, template)
    stops = sorted({tokenizer.convert_ids_to_tokens(i) for i in stop_ids})
    lines = [
        "# Written by tunesmith export --ollama. Create the model with:",
        "#   ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go_template(parts)}"""',
        *(f'PARAMETER stop "{s}"' for s in stops),
        "PARAMETER temperature 0",
        f"PARAMETER num_ctx {min(context_length, 8192)}",
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, tokenizer, stop_ids: list[int], context_length: int) -> Path:
    """Write ``Modelfile`` beside ``gguf_path`` (atomically) and return its path."""
    text = modelfile_text(Path(gguf_path).name, tokenizer, stop_ids, context_length)
    return write_text(Path(gguf_path).parent / MODELFILE, text)
