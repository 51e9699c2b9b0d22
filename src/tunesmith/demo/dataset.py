"""The demo's train/eval conversations and the deliberately dirty raw training file.

The split holds out whole slot fillings: every phrasing of a held-out filling shares its
SQL, so none of them may appear in training. Eval takes one phrasing per held-out filling
and covers every template; training samples the remaining fillings in all phrasings,
skipping any record whose question + SQL is a near duplicate (word 3-gram Jaccard >= 0.8)
of an eval record or of a training record already taken. Templated text is alike by
nature, so near duplicates are measured without the system prompt, which every record
shares (with it, a single changed slot value reaches 0.8).

The raw file (messages format, ``meta`` kept) is the clean training split plus planted
dirt for ``tunesmith clean`` to find: ~3% exact duplicates, ~2% near duplicates (an extra
space, a case change or one word swapped for a synonym in the question) and eight broken
records.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tunesmith.atomic import write_jsonl, write_text
from tunesmith.data.records import Conversation, Turn
from tunesmith.demo.questions import Example, instances, round_robin
from tunesmith.demo.sql_text import normalize_sql

SYSTEM_PROMPT = "Translate the question into one SQLite query over the clinic database."
TASK = "clinic-sql"
EXACT_DUP_RATE = 0.03
NEAR_DUP_RATE = 0.02
# At most this share of a template's fillings is held out, so training keeps most of them.
MAX_HELD_OUT_SHARE = 0.25
# Word-shingle Jaccard at or above which two records count as near duplicates; the same
# defaults as ``tunesmith clean`` (0.8 over 3-word shingles).
NEAR_DUP_JACCARD = 0.8
# Training records keep a wider gap to eval records: MinHash estimates of Jaccard have a
# standard deviation of ~0.04 at 128 permutations, so a 0.78 pair is often flagged as a
# leak at 0.8 by a cleaner that estimates instead of computing.
EVAL_GAP_JACCARD = 0.7
SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")


def normalize_question(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form leak checks compare."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def to_conversation(ex: Example, db_seed: int, source: str) -> Conversation:
    """system + user(question) + assistant(SQL), with the meta the SQL scorer needs."""
    return Conversation(
        turns=(
            Turn("system", SYSTEM_PROMPT),
            Turn("user", ex.question),
            Turn("assistant", ex.sql),
        ),
        source=source,
        meta={"task": TASK, "db_seed": db_seed, "template": ex.template},
    )


def _shingles(ex: Example) -> frozenset[tuple[str, ...]]:
    """Word 3-gram set of question + SQL, case-folded (as ``tunesmith clean`` shingles).

    The system prompt is left out: it is the same in every record, so it only inflates
    the similarity of records that have nothing else in common (with it, one changed slot
    value already reaches 0.8).
    """
    words = _WORD.findall(f"{ex.question}\n{ex.sql}".casefold())
    n = min(SHINGLE_WORDS, len(words))
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b)


class _NearDupFilter:
    """Finds a set with Jaccard >= ``threshold`` among those added, by prefix filtering.

    Sort each set's shingles rarest first (one global order); two sets with Jaccard >= t
    must share a shingle among the first ``n - ceil(t * n) + 1`` of each (Chaudhuri, Ganti
    & Kaushik, "A primitive operator for similarity joins", ICDE 2006; Xiao et al., PPJoin,
    WWW 2008). Only sets sharing such a rare prefix shingle are compared exactly, which
    keeps the greedy pass linear in practice instead of quadratic.
    """

    def __init__(self, doc_freq: Counter, threshold: float):
        self.doc_freq, self.threshold = doc_freq, threshold
        self.sets: list[frozenset] = []
        self.index: dict[tuple[str, ...], list[int]] = {}

    def _prefix(self, sh: frozenset) -> list[tuple[str, ...]]:
        order = sorted(sh, key=lambda g: (self.doc_freq[g], g))
        # The epsilon keeps e.g. ceil(0.8 * 10) at 8 despite 0.8 * 10 == 8.000000000000002.
        return order[: len(order) - math.ceil(self.threshold * len(order) - 1e-9) + 1]

    def near(self, sh: frozenset) -> bool:
        seen: set[int] = set()
        for g in self._prefix(sh):
            for j in self.index.get(g, ()):
                if j not in seen:
                    seen.add(j)
                    if _jaccard(sh, self.sets[j]) >= self.threshold:
                        return True
        return False

    def add(self, sh: frozenset) -> None:
        for g in self._prefix(sh):
            self.index.setdefault(g, []).append(len(self.sets))
        self.sets.append(sh)


def _spread(pool: list[Example], evals: list[Example]) -> Iterator[Example]:
    """Yield the examples of one template's pool that are neither near an eval example of
    that template (Jaccard >= EVAL_GAP_JACCARD) nor a near duplicate of an example yielded
    before (Jaccard >= NEAR_DUP_JACCARD).

    Lazy, so only as much of the pool is checked as training actually consumes.
    """
    pool_sh = [_shingles(ex) for ex in pool]
    eval_sh = [_shingles(ex) for ex in evals]
    doc_freq = Counter(g for sh in pool_sh + eval_sh for g in sh)
    near_eval = _NearDupFilter(doc_freq, EVAL_GAP_JACCARD)
    seen = _NearDupFilter(doc_freq, NEAR_DUP_JACCARD)
    for sh in eval_sh:
        near_eval.add(sh)
    for ex, sh in zip(pool, pool_sh, strict=True):
        if not near_eval.near(sh) and not seen.near(sh):
            seen.add(sh)
            yield ex


@functools.lru_cache(maxsize=8)
def _split(seed: int, n_train: int, n_eval: int) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    rng = random.Random(f"split-{seed}")
    held: dict[str, list[list[Example]]] = {}  # template -> held-out filling candidates
    kept: dict[str, list[list[Example]]] = {}  # template -> fillings left for training
    for name, fillings in instances(seed).items():
        fillings = list(fillings)
        rng.shuffle(fillings)
        cap = max(1, int(len(fillings) * MAX_HELD_OUT_SHARE))
        held[name], kept[name] = fillings[:cap], fillings[cap:]
    # Round-robin over templates so eval covers all of them before any gets a second one;
    # one phrasing per held-out filling.
    eval_ex = list(round_robin(([rng.choice(f) for f in h] for h in held.values()), n_eval))
    withheld = {normalize_sql(e.sql) for e in eval_ex}
    eval_q = {normalize_question(e.question) for e in eval_ex}
    pools = []
    for name, fillings in kept.items():
        # Candidates eval did not need go back to training.
        fillings = fillings + [f for f in held[name] if normalize_sql(f[0].sql) not in withheld]
        flat = [
            ex
            for filling in fillings
            for ex in filling
            # Guard against two templates producing the same text or query.
            if normalize_question(ex.question) not in eval_q
            and normalize_sql(ex.sql) not in withheld
        ]
        rng.shuffle(flat)
        pools.append(_spread(flat, [e for e in eval_ex if e.template == name]))
    train_ex = list(round_robin(pools, n_train))
    rng.shuffle(train_ex)
    return tuple(train_ex), tuple(eval_ex)


def demo_splits(
    seed: int = 0, n_train: int = 3000, n_eval: int = 200
) -> tuple[list[Conversation], list[Conversation]]:
    """The clean demo train and eval conversations, deterministic per seed.

    Args:
        seed: Seeds the clinic database (``meta["db_seed"]``) and all sampling.
        n_train: Training conversations (fewer if the templates run out).
        n_eval: Held-out conversations; every template is represented.

    Returns:
        ``(train, eval)``; no question (after :func:`normalize_question`) and no SQL (after
        ``normalize_sql``) of eval occurs in train.
    """
    train_ex, eval_ex = _split(seed, n_train, n_eval)
    train = [to_conversation(e, seed, f"clinic-demo-train:{i + 1}") for i, e in enumerate(train_ex)]
    evals = [to_conversation(e, seed, f"clinic-demo-eval:{i + 1}") for i, e in enumerate(eval_ex)]
    return train, evals


# One-word synonyms: swapping the first of these in a question keeps its meaning (and its
# SQL); used for word-level near duplicates.
_SYNONYMS = {
    "List": "Show", "Show": "List", "Find": "Show", "Name": "List", "Count": "Tally",
    "Give": "Provide", "Sum": "Add", "Break": "Split", "Which": "What", "visits": "appointments",
    "visit": "appointment", "doctors": "physicians", "average": "mean", "mean": "average",
    "number": "count", "different": "distinct", "distinct": "different", "patients": "people",
    "prescriptions": "orders", "prescribed": "given", "covered": "insured", "mg": "milligrams",
}  # fmt: skip


def _near_duplicate(question: str, kind: int, rng: random.Random) -> str:
    """A perturbed question: 0 = an extra space, 1 = case change, 2 = one word swapped."""
    words = question.split(" ")
    if kind == 0:
        i = rng.randrange(1, len(words))
        return " ".join(words[:i]) + "  " + " ".join(words[i:])
    cores = [w.rstrip("?.,") for w in words]
    swap = next((i for i, w in enumerate(cores) if w in _SYNONYMS), None)
    if kind == 1 or swap is None:
        return question.lower()
    words[swap] = words[swap].replace(cores[swap], _SYNONYMS[cores[swap]], 1)
    return " ".join(words)


class RawDemo(NamedTuple):
    """The raw file's lines and, for tests and reports, where the dirt was planted.

    Line numbers are 1-based. ``exact_duplicates`` and ``near_duplicates`` list the later
    copy of each pair (the first occurrence is the one a cleaner keeps).
    """

    lines: list[str]
    exact_duplicates: list[int]
    near_duplicates: list[int]
    broken: dict[int, str]  # line -> what is wrong with it


def _broken_records(rng: random.Random, good: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Eight broken lines built from real records, each with the reason a validator should give."""
    a, b, c, d, e, f, g, h = (json.loads(json.dumps(rng.choice(good))) for _ in range(8))
    text_a = json.dumps(a, ensure_ascii=False)
    c["messages"] = c["messages"][:2]
    d["messages"] = [m for m in d["messages"] if m["role"] != "assistant"] + [{"role": "user"}]
    e["messages"][-1]["content"] = ""
    f["messages"][-1]["content"] = "   "
    g["messages"][-1]["content"] = 42
    h["messages"] = "SELECT COUNT(*) FROM patients"
    return [
        (text_a[: len(text_a) // 2], "invalid JSON (truncated line)"),
        (repr(b), "invalid JSON (Python dict syntax)"),
        (json.dumps(c), "missing answer (no assistant turn)"),
        (json.dumps(d), "missing field (a turn without content)"),
        (json.dumps(e), "empty answer"),
        (json.dumps(f), "empty answer (whitespace only)"),
        (json.dumps(g), "wrong type (content is a number)"),
        (json.dumps(h), "wrong type (messages is a string)"),
    ]


def raw_demo(seed: int = 0, n_train: int = 3000, n_eval: int = 200) -> RawDemo:
    """Build the raw training file in memory; see :func:`write_raw_demo`."""
    rng = random.Random(f"raw-{seed}")
    train, _ = demo_splits(seed, n_train=n_train, n_eval=n_eval)
    good = [c.to_json() for c in train]
    picks = rng.sample(range(len(good)), round(len(good) * (EXACT_DUP_RATE + NEAR_DUP_RATE)))
    n_exact = round(len(good) * EXACT_DUP_RATE)
    questions = {r["messages"][1]["content"] for r in good}
    # (record, kind) where kind is "exact", "near" or a broken reason; each extra is
    # inserted after its original so the original stays the first occurrence.
    extras: list[tuple[int, str, str]] = []  # (after index, line, kind)
    for j, idx in enumerate(picks):
        row = good[idx]
        if j < n_exact:
            extras.append((idx, json.dumps(row, ensure_ascii=False), "exact"))
            continue
        near = json.loads(json.dumps(row))
        q = _near_duplicate(row["messages"][1]["content"], j % 3, rng)
        if q in questions:  # a "near" copy that equals another record would be exact
            q = q.lower()
        near["messages"][1]["content"] = q
        questions.add(q)
        extras.append((idx, json.dumps(near, ensure_ascii=False), "near"))
    for line, reason in _broken_records(rng, good):
        extras.append((rng.randrange(len(good)), line, reason))
    # Insert each extra at a random later position, so duplicates are not adjacent.
    slots: dict[int, list[tuple[str, str]]] = {}
    for after, line, kind in extras:
        slots.setdefault(rng.randrange(after, len(good)), []).append((line, kind))
    lines: list[str] = []
    out = RawDemo(lines, [], [], {})
    for i, row in enumerate(good):
        lines.append(json.dumps(row, ensure_ascii=False))
        for line, kind in slots.get(i, []):
            lines.append(line)
            if kind == "exact":
                out.exact_duplicates.append(len(lines))
            elif kind == "near":
                out.near_duplicates.append(len(lines))
            else:
                out.broken[len(lines)] = kind
    return out


def write_raw_demo(path: str | Path, seed: int = 0, n_train: int = 3000, n_eval: int = 200) -> Path:
    """Write the raw (dirty) demo training file as JSONL in messages format, atomically.

    Args:
        path: Target file.
        seed: Seeds the database and every choice; equal seeds give identical bytes.
        n_train: Clean records before the planted duplicates and broken lines.
        n_eval: Size of the eval split held out of it; pass the same value to
            :func:`write_demo_eval` (a larger eval split than the one held out would leak).

    Returns:
        ``path`` as a Path.
    """
    return write_text(path, "\n".join(raw_demo(seed, n_train, n_eval).lines) + "\n")


def write_demo_eval(path: str | Path, seed: int = 0, n_eval: int = 200) -> Path:
    """Write the clean held-out eval conversations (messages format with meta), atomically."""
    _, evals = demo_splits(seed, n_eval=n_eval)
    return write_jsonl(path, (c.to_json() for c in evals))


def write_demo_files(
    directory: str | Path, seed: int = 0, n_train: int = 3000, n_eval: int = 200
) -> tuple[Path, Path]:
    """Write the raw training file and the eval file of the demo into ``directory``.

    Returns:
        ``(directory / "clinic_train_raw.jsonl", directory / "clinic_eval.jsonl")``.
    """
    directory = Path(directory)
    raw = write_raw_demo(directory / "clinic_train_raw.jsonl", seed, n_train, n_eval)
    return raw, write_demo_eval(directory / "clinic_eval.jsonl", seed, n_eval)
