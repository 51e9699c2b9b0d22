"""Tokens to streamed text: incremental detokenization and stop strings.

The answer is always ``tokenizer.decode(tokens, skip_special_tokens=True)`` (what
``tunesmith chat`` decodes) cut at the first stop string; the stream sends the growth of that
text, holding back a tail that could still become a stop string or an incomplete UTF-8
character, so the pieces add up to exactly the final answer.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes an incomplete UTF-8 sequence to


class TextStream:
    """The text of one answer as its tokens arrive."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters of the answer already handed out
        self.text = ""
        self.stopped = False  # a stop string was found; ``text`` ends before it

    def add(self, token: int) -> str:
        """Append a token; return the new text that is safe to send now."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hold = 0
        cuts = [at for at in (self.text.find(s) for s in self.stop) if at >= 0]
        if cuts:
            # The held-back tail keeps a stop string from being sent before it is complete.
            self.text, self.stopped = self.text[: max(min(cuts), self.sent)], True
        if not self.stopped:
            if self.stop:
                hold = max(len(s) for s in self.stop) - 1
            while hold < len(self.text) and self.text[len(self.text) - hold - 1] == REPLACEMENT:
                hold += 1
        return self._take(len(self.text) - hold)

    def rest(self) -> str:
        """At the end of the answer: everything not yet sent."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : upto], upto
        return piece
