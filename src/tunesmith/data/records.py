"""The normalized record every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """One training example: a list of turns plus where it came from.

    ``meta`` carries task data that scorers need (e.g. the gold SQL and database seed for
    the demo), and is written back out unchanged by ``clean``.
    """

    turns: tuple[Turn, ...]
    source: str = ""  # "file:line" of the record, for error messages and reports
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt_turns(self) -> tuple[Turn, ...]:
        """All turns before the final assistant turn (what the model is given at eval time)."""
        return self.turns[:-1] if self.turns and self.turns[-1].role == "assistant" else self.turns

    @property
    def answer(self) -> str:
        """The final assistant turn's text (the reference answer at eval time)."""
        return self.turns[-1].content if self.turns and self.turns[-1].role == "assistant" else ""

    def to_messages(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def to_json(self) -> dict[str, Any]:
        """The canonical on-disk form (messages format), meta kept when present."""
        row: dict[str, Any] = {"messages": self.to_messages()}
        if self.meta:
            row["meta"] = self.meta
        return row

    @classmethod
    def from_messages(
        cls, messages: list[dict[str, str]], source: str = "", meta: dict[str, Any] | None = None
    ) -> Conversation:
        return cls(
            turns=tuple(Turn(m["role"], m["content"]) for m in messages),  # type: ignore[arg-type]
            source=source,
            meta=dict(meta or {}),
        )
