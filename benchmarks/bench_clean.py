"""Benchmark `tunesmith clean`: near-duplicate precision/recall, wall time and peak memory.

Generates a seeded alpaca JSONL file of ``--n`` records (about 200 words each, Zipf-distributed
pseudo-English vocabulary) with planted duplicates: 10% exact copies of other records and 5%
near duplicates (1-3 word substitutions, insertions or deletions in the answer). Then runs
:func:`tunesmith.data.clean.clean` on it in a child process (so the peak RSS measured is the
cleaner's own) and scores every near-duplicate drop against the planted pairs.

Goals (issue 3): recall >= 0.95, precision >= 0.99, <= 60 s for 100k records on the 2-core
reference machine.

Usage:
    python benchmarks/bench_clean.py            # 100k records
    python benchmarks/bench_clean.py --n 20000  # smaller, for a shared machine
    python benchmarks/bench_clean.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_FUNCTION_TEXT = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those"
)
_ONSET_TEXT = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl pr sl st tr ch sh th"
_FUNCTION_WORDS, _ONSETS = _FUNCTION_TEXT.split(), _ONSET_TEXT.split()
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "oo", "ou"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "rk"]


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        words.add(
            "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(n))
            + rng.choice(_CODAS)
        )
    return _FUNCTION_WORDS + sorted(words)


class _Text:
    """Zipf-distributed words grouped into sentences (s = 1.05 over ~30k words)."""

    def __init__(self, rng: random.Random, vocab_size: int = 30000):
        self.rng = rng
        self.vocab = _vocabulary(rng, vocab_size)
        weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(self.vocab))]
        total, acc = sum(weights), 0.0
        self.cum = []
        for w in weights:
            acc += w
            self.cum.append(acc / total)

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def sentences(self, n_words: int) -> str:
        out, words = [], self.words(n_words)
        while words:
            k = self.rng.randint(8, 20)
            chunk, words = words[:k], words[k:]
            out.append(" ".join(chunk).capitalize() + ".")
        return " ".join(out)


def _edit(text: str, rng: random.Random, gen: _Text) -> str:
    toks = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(1, len(toks) - 1)
        op = rng.choice(("sub", "ins", "del"))
        if op == "sub":  # a word that differs even after case-folding, so this stays a *near* dup
            old = toks[i].lower().strip(".")
            toks[i] = next(w for w in iter(lambda: gen.words(1)[0], None) if w != old)
        elif op == "ins":
            toks.insert(i, gen.words(1)[0])
        else:
            del toks[i]
    return " ".join(toks)


def generate(path: Path, n: int, seed: int = 0) -> set[tuple[int, int]]:
    """Write ``n`` records to ``path``; return the planted near pairs as 1-based line numbers."""
    rng = random.Random(seed)
    gen = _Text(rng)
    n_exact, n_near = n // 10, n // 20
    n_base = n - n_exact - n_near
    bases = [
        (gen.sentences(rng.randint(12, 25)), gen.sentences(rng.randint(160, 200)))
        for _ in range(n_base)
    ]
    # Originals of near pairs and of exact copies are disjoint, so each near pair has exactly
    # one record that the cleaner should drop as a near duplicate.
    picks = rng.sample(range(n_base), n_near + n_exact)
    near_of, exact_of = picks[:n_near], picks[n_near:]
    records = [(i, q, a) for i, (q, a) in enumerate(bases)]
    records += [(i, bases[i][0], _edit(bases[i][1], rng, gen)) for i in near_of]
    records += [(i, *bases[i]) for i in exact_of]
    rng.shuffle(records)
    near_set, lines_of = set(near_of), {}
    with open(path, "w", encoding="utf-8") as fh:
        for line, (origin, q, a) in enumerate(records, start=1):
            fh.write(json.dumps({"instruction": q, "output": a}) + "\n")
            if origin in near_set:
                lines_of.setdefault(origin, set()).add(line)
    return {tuple(sorted(lines)) for lines in lines_of.values()}  # type: ignore[misc]


def _run_clean(src: str, out: str, threshold: float, workers: int) -> None:
    """Child process: clean, print the timings, the RSS peak and every near-dup decision."""
    from tunesmith.data.clean import clean

    pairs = []

    def on_drop(reason: str, source: str, detail: dict) -> None:
        if reason == "near_duplicates":
            pairs.append((int(source.rsplit(":", 1)[1]), int(detail["kept"].rsplit(":", 1)[1])))

    def children_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    start, cpu, cpu_children = time.perf_counter(), time.process_time(), children_cpu()
    result = clean([src], out, near_dup_threshold=threshold, workers=workers, on_drop=on_drop)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu + children_cpu() - cpu_children  # workers included
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 if workers else 0
    r = result.report
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_bytes": peak,
                "worker_peak_rss_bytes": worker_peak,
                "pairs": pairs,
                "report": {
                    k: r[k]
                    for k in (
                        "input_records",
                        "kept",
                        "exact_duplicates",
                        "near_duplicates",
                        "repetitive",
                        "too_short",
                    )
                },
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8, help="near-dup Jaccard threshold")
    parser.add_argument("--workers", type=int, default=0, help="clean's extra hashing processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _run_clean(*args._child, args.threshold, args.workers)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_clean_") as tmp:
        src, out = Path(tmp) / "raw.jsonl", Path(tmp) / "clean" / "train.jsonl"
        t0 = time.perf_counter()
        planted = generate(src, args.n, args.seed)
        gen_s = time.perf_counter() - t0
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--threshold",
                str(args.threshold),
                "--workers",
                str(args.workers),
                "--_child",
                str(src),
                str(out),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        run = json.loads(child.stdout.strip().splitlines()[-1])
        size = src.stat().st_size
    found = {tuple(sorted(p)) for p in run["pairs"]}
    true_pos = len(found & planted)
    result = {
        "n": args.n,
        "file_mib": round(size / 2**20, 1),
        "generate_s": round(gen_s, 1),
        "planted_exact": args.n // 10,
        "planted_near": len(planted),
        "exact_found": run["report"]["exact_duplicates"],
        "near_found": len(run["pairs"]),
        "near_recall": round(true_pos / max(len(planted), 1), 4),
        "near_precision": round(true_pos / max(len(run["pairs"]), 1), 4),
        "wall_s": round(run["wall_s"], 1),
        # CPU time of the cleaner: what wall time would be on an otherwise idle core.
        "cpu_s": round(run["cpu_s"], 1),
        "records_per_s": round(args.n / run["wall_s"]),
        "peak_rss_mib": round(run["peak_rss_bytes"] / 2**20),
        "workers": args.workers,
        "worker_peak_rss_mib": round(run["worker_peak_rss_bytes"] / 2**20),
        "kept": run["report"]["kept"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tunesmith clean on {args.n} records (~200 words each)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    goals = {"near_recall": ">= 0.95", "near_precision": ">= 0.99", "wall_s": "<= 60 (100k)"}
    for key, value in result.items():
        table.add_row(key, str(value), goals.get(key, ""))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
