"""The masking preview: records rendered as training renders them, with the trained tokens.

Behind ``tunesmith data preview`` and the web UI's Data page: each record becomes text pieces
flagged trained or not (the loss mask), plus a summary (trained share, whether the end-of-turn
token is trained, records truncated at the sequence length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class RecordPreview:
    """One rendered record: its tokens as text pieces with their trained flag."""

    source: str
    tokens: list[dict]  # [{"text": str, "trained": bool}]
    num_tokens: int
    num_trained: int
    eos_trained: bool
    truncated: bool

    @property
    def trained_share(self) -> float:
        return self.num_trained / self.num_tokens if self.num_tokens else 0.0


def token_pieces(tokenizer, ids: Sequence[int], trained: Sequence[bool]) -> list[dict]:
    """Decoded text per token; a character split over several byte-level tokens is kept whole
    (decoding its first bytes alone would give U+FFFD), trained if any of its tokens is."""
    pieces: list[dict] = []
    buf: list[int] = []
    flag = False
    for i, (tid, t) in enumerate(zip(ids, trained, strict=True)):
        buf.append(tid)
        flag = flag or t
        text = tokenizer.decode(buf)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            continue
        pieces.append({"text": text, "trained": flag})
        buf, flag = [], False
    return pieces


def preview_record(
    tokenizer, conv, *, seq_len: int, train_on_prompt: bool = False
) -> RecordPreview:
    """Render one conversation exactly as training does and describe its loss mask."""
    from tunesmith.data.render import IGNORE_INDEX, render_example

    full = render_example(tokenizer, conv, train_on_prompt=train_on_prompt)
    r = render_example(tokenizer, conv, train_on_prompt=train_on_prompt, max_len=seq_len)
    trained = [lab != IGNORE_INDEX for lab in r.labels]
    eos = tokenizer.eos_token_id
    return RecordPreview(
        source=conv.source,
        tokens=token_pieces(tokenizer, r.input_ids, trained),
        num_tokens=len(r.input_ids),
        num_trained=sum(trained),
        eos_trained=any(t and i == eos for i, t in zip(r.input_ids, trained, strict=True)),
        truncated=len(full.input_ids) > len(r.input_ids),
    )


def summary(records: Sequence[RecordPreview]) -> dict:
    tokens = sum(r.num_tokens for r in records)
    return {
        "records": len(records),
        "tokens_mean": round(tokens / len(records), 1) if records else 0.0,
        "tokens_max": max((r.num_tokens for r in records), default=0),
        "trained_share": round(sum(r.num_trained for r in records) / tokens, 4) if tokens else 0.0,
        "eos_trained_records": sum(r.eos_trained for r in records),
        "no_trained_token_records": sum(r.num_trained == 0 for r in records),
        "truncated_records": sum(r.truncated for r in records),
    }


def first_records(file: str, n: int, fmt: str | None = None):
    """The first ``n`` usable records of ``file`` and the invalid ones met on the way.

    A preference file shows each record as its sides (chosen and rejected), each with the mask
    training uses, so both sides' end-of-turn token is seen trained.

    Returns:
        ``(conversations, invalid)``: up to ``n`` :class:`Conversation` and the
        :class:`Invalid` records read before them.
    """
    from tunesmith.data.preference import is_preference_file, read_preference_file, sides
    from tunesmith.data.readers import read_files
    from tunesmith.data.records import Conversation
    from tunesmith.data.validate import Invalid

    convs, invalid = [], []
    if fmt is None and is_preference_file(file):
        for item in read_preference_file(file):
            if isinstance(item, Invalid):
                invalid.append(item)
                continue
            convs.extend(sides(item))
            if len(convs) >= n:
                return convs[:n], invalid
        return convs, invalid
    for item in read_files([file], fmt):
        if isinstance(item, Conversation):
            convs.append(item)
            if len(convs) == n:
                break
        else:
            invalid.append(item)
    return convs, invalid
