"""Unicode and whitespace normalization, and the keys that deduplication compares.

Two levels, on purpose:

- :func:`normalize_text` is what gets *written*: NFKC (full-width letters, ligatures and
  non-breaking spaces become their plain forms), zero-width characters removed, line endings
  unified, trailing spaces and runs of blank lines trimmed. Indentation inside a line is kept,
  because code answers need it.
- :func:`exact_key` and :func:`words` are what gets *compared*: case-folded, every whitespace
  run as one space, so two records that differ only in layout or case are exact duplicates.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from tunesmith.data.records import Conversation, Turn

# Zero-width space, word joiner and BOM: invisible, and NFKC leaves them in place. (Zero-width
# joiners are kept: emoji sequences need them.)
_INVISIBLE = str.maketrans("", "", "\u200b\u2060\ufeff")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """NFKC, invisible characters removed, ``\\r\\n`` -> ``\\n``, trailing spaces and extra blank lines trimmed."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    # The substitutions only where they can apply: most records need none of them, and this
    # runs on every turn of every record.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_conversation(conv: Conversation) -> Conversation:
    """The same conversation with every turn's text normalized; source and meta unchanged."""
    turns = tuple(Turn(t.role, normalize_text(t.content)) for t in conv.turns)
    return Conversation(turns, conv.source, conv.meta)


def comparable(text: str) -> str:
    """Case-folded with each whitespace run as one space: equal for layout-only differences."""
    return " ".join(text.casefold().split())


def exact_key(conv: Conversation) -> bytes:
    """A 16-byte digest of the (normalized) conversation, roles included, for exact dedup."""
    h = hashlib.blake2b(digest_size=16)
    for t in conv.turns:
        h.update(t.role.encode())
        h.update(b"\x00")
        h.update(comparable(t.content).encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.digest()


def text_of(conv: Conversation) -> str:
    """All turns' text, one turn per line: what near-duplicate detection shingles."""
    return "\n".join(t.content for t in conv.turns)


def words(text: str) -> list[str]:
    """Case-folded word tokens (``\\w+``): punctuation and layout do not separate near-duplicates."""
    return _WORD.findall(text.casefold())
